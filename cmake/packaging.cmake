# Install rules and the Debian package (CPack DEB). Included from the top-level CMakeLists.txt
# after install(TARGETS hiapi-proxy ...), which puts the binary in ${CMAKE_INSTALL_BINDIR}
# (/usr/bin in the package).
#
#   cmake --build <build> --target deb        (builds hiapi-proxy, then runs cpack -G DEB)
#   dpkg-deb -c hiapi-proxy_<version>_<arch>.deb
#
# The unit and the configuration go to absolute paths (/lib/systemd/system, /etc/hiapi-proxy):
# that is where Debian wants them whatever the prefix. A plain `cmake --install` outside a
# package therefore needs DESTDIR (or root).

set(HIAPI_PKG_DIR ${CMAKE_BINARY_DIR}/packaging)
set(HIAPI_SYSTEMD_UNIT_DIR /lib/systemd/system)
set(HIAPI_ETC_DIR /etc/hiapi-proxy)
set(HIAPI_DOC_DIR ${CMAKE_INSTALL_DATAROOTDIR}/doc/hiapi-proxy)
set(HIAPI_STATE_FILE /var/lib/hiapi-proxy/tasks.json)

# ---- the service's configuration ---------------------------------------------------------------
# conf/hiapi-proxy.yaml stays the one commented default. The packaged copy differs in one value:
# the task state file lives in the unit's StateDirectory= (running tasks keep their tier slots
# across restarts and upgrades). Generated here rather than kept as a second copy that would
# drift; re-generated whenever conf/hiapi-proxy.yaml changes.
set(HIAPI_CONF_SRC ${CMAKE_SOURCE_DIR}/conf/hiapi-proxy.yaml)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${HIAPI_CONF_SRC})
file(READ ${HIAPI_CONF_SRC} HIAPI_CONF)
string(REGEX MATCH "\n  state_file:[^\n]*" HIAPI_STATE_LINE "${HIAPI_CONF}")
if(HIAPI_STATE_LINE)
  string(REPLACE "${HIAPI_STATE_LINE}" "\n  state_file: ${HIAPI_STATE_FILE}" HIAPI_CONF
                 "${HIAPI_CONF}")
else()
  message(WARNING "packaging: no 'state_file:' line under tasks in ${HIAPI_CONF_SRC}; the "
                  "packaged configuration keeps its value (tasks are not saved across restarts)")
endif()
# systemd puts credentials in /run/credentials/<unit name>/, unit name with its suffix.
string(REPLACE "/run/credentials/hiapi-proxy/" "/run/credentials/hiapi-proxy.service/" HIAPI_CONF
               "${HIAPI_CONF}")
file(WRITE ${HIAPI_PKG_DIR}/hiapi-proxy.yaml.tmp
     "# Installed by the hiapi-proxy package as /etc/hiapi-proxy/hiapi-proxy.yaml (a conffile:\n"
     "# your changes survive upgrades). It is conf/hiapi-proxy.yaml from the source tree with\n"
     "# tasks.state_file set to ${HIAPI_STATE_FILE} (the unit's StateDirectory=).\n"
     "# Apply a change with `systemctl reload hiapi-proxy`; see\n"
     "# /usr/share/doc/hiapi-proxy/running.md. The service runs as a dynamic user: keep this file\n"
     "# readable by others and put no key in it (LoadCredential= or /etc/hiapi-proxy/env).\n"
     "#\n"
     "${HIAPI_CONF}")
# Only touch the output when it changed, so that an unchanged file does not look new to make.
file(COPY_FILE ${HIAPI_PKG_DIR}/hiapi-proxy.yaml.tmp ${HIAPI_PKG_DIR}/hiapi-proxy.yaml
     ONLY_IF_DIFFERENT)

# ---- Debian policy files: copyright and changelog ------------------------------------------
# Who answers for the package, and where it lives: set them for a build you publish
# (-DHIAPI_PACKAGE_MAINTAINER="Name <mail>" -DHIAPI_PACKAGE_HOMEPAGE=https://...). The default
# maintainer is the identity the repository's commits carry; without a homepage the field is
# left out rather than pointing at a site that is not this project's.
set(HIAPI_PACKAGE_MAINTAINER
    "hiapi-proxy maintainers <maintainers@users.noreply.r-seed-35819262.example>"
    CACHE STRING "Maintainer of the Debian package (Name <address>)")
set(HIAPI_PACKAGE_HOMEPAGE "" CACHE STRING "Homepage of the Debian package (empty: none)")
configure_file(${CMAKE_SOURCE_DIR}/systemd/debian/copyright ${HIAPI_PKG_DIR}/copyright @ONLY)
# The changelog's top entry must be this version (dpkg and lintian compare them).
set(HIAPI_CHANGELOG_SRC ${CMAKE_SOURCE_DIR}/systemd/debian/changelog)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${HIAPI_CHANGELOG_SRC})
file(STRINGS ${HIAPI_CHANGELOG_SRC} HIAPI_CHANGELOG_TOP LIMIT_COUNT 1)
if(NOT HIAPI_CHANGELOG_TOP MATCHES "^hiapi-proxy \\(${PROJECT_VERSION}\\) ")
  message(FATAL_ERROR "systemd/debian/changelog starts with '${HIAPI_CHANGELOG_TOP}': its top "
                      "entry must be hiapi-proxy (${PROJECT_VERSION}), the project's version")
endif()
# Debian wants it as changelog.gz, compressed with -9 and no name or time stamp (-n), so that
# the same source gives the same package.
find_program(HIAPI_GZIP gzip REQUIRED)
execute_process(COMMAND ${HIAPI_GZIP} -9nc ${HIAPI_CHANGELOG_SRC}
                OUTPUT_FILE ${HIAPI_PKG_DIR}/changelog.gz
                RESULT_VARIABLE HIAPI_GZIP_RESULT)
if(NOT HIAPI_GZIP_RESULT EQUAL 0)
  message(FATAL_ERROR "gzip of systemd/debian/changelog failed: ${HIAPI_GZIP_RESULT}")
endif()

# Debian: files under /etc are conffiles only when listed.
file(WRITE ${HIAPI_PKG_DIR}/conffiles "${HIAPI_ETC_DIR}/hiapi-proxy.yaml\n")

# ---- install rules -----------------------------------------------------------------------------
install(FILES ${CMAKE_SOURCE_DIR}/systemd/hiapi-proxy.service
        DESTINATION ${HIAPI_SYSTEMD_UNIT_DIR}
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
install(FILES ${HIAPI_PKG_DIR}/hiapi-proxy.yaml
        DESTINATION ${HIAPI_ETC_DIR}
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)

install(FILES ${HIAPI_PKG_DIR}/copyright ${HIAPI_PKG_DIR}/changelog.gz
        DESTINATION ${HIAPI_DOC_DIR}
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
set(HIAPI_DOCS ${CMAKE_SOURCE_DIR}/README.md)
foreach(doc running.md metrics.md)
  if(EXISTS ${CMAKE_SOURCE_DIR}/docs/${doc})
    list(APPEND HIAPI_DOCS ${CMAKE_SOURCE_DIR}/docs/${doc})
  endif()
endforeach()
install(FILES ${HIAPI_DOCS} DESTINATION ${HIAPI_DOC_DIR})
# Examples: the untouched default configuration, the key drop-in and environment file, the
# Grafana dashboard.
install(FILES ${HIAPI_CONF_SRC}
              ${CMAKE_SOURCE_DIR}/systemd/credential.conf
              ${CMAKE_SOURCE_DIR}/systemd/hiapi-proxy.env
        DESTINATION ${HIAPI_DOC_DIR}/examples)
install(FILES ${CMAKE_SOURCE_DIR}/tools/grafana/hiapi-proxy.json
              ${CMAKE_SOURCE_DIR}/tools/grafana/alerts.yml
        DESTINATION ${HIAPI_DOC_DIR}/examples/grafana)

# cpack (and `make install`) would first build the whole tree, every test included: the package
# needs only the daemon. `cmake --build <build> --target deb` builds it and packs.
set(CMAKE_SKIP_INSTALL_ALL_DEPENDENCY TRUE)
add_custom_target(deb
  COMMAND ${CMAKE_CPACK_COMMAND} -G DEB --config ${CMAKE_BINARY_DIR}/CPackConfig.cmake
  WORKING_DIRECTORY ${CMAKE_BINARY_DIR}
  COMMENT "Building the Debian package"
  VERBATIM)
add_dependencies(deb hiapi-proxy)

# ---- CPack: DEB --------------------------------------------------------------------------------
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME hiapi-proxy)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_PACKAGE_DESCRIPTION
    "A local daemon that services point their HiAPI base URL at. It forwards\n"
    "/v1/... to the HiAPI task API over verified TLS with one token bucket per\n"
    "key, per-model-tier concurrency gates, a bounded fair queue, 429 absorption\n"
    "with Retry-After, cached polls and Prometheus metrics. Runs as a hardened\n"
    "systemd service (Type=notify).")
string(REPLACE ";" "" CPACK_PACKAGE_DESCRIPTION "${CPACK_PACKAGE_DESCRIPTION}")
set(CPACK_PACKAGE_CONTACT "${HIAPI_PACKAGE_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${HIAPI_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
if(HIAPI_PACKAGE_HOMEPAGE)
  set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "${HIAPI_PACKAGE_HOMEPAGE}")
endif()
# Shared-library dependencies from dpkg-shlibdeps (dpkg-dev), plus what the shell needs at run
# time without linking it: the system trust store for the upstream's certificate.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "ca-certificates")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "systemd")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${HIAPI_PKG_DIR}/conffiles
    ${CMAKE_SOURCE_DIR}/systemd/debian/postinst
    ${CMAKE_SOURCE_DIR}/systemd/debian/prerm
    ${CMAKE_SOURCE_DIR}/systemd/debian/postrm)
# 0644 for conffiles, 0755 for the maintainer scripts, whatever the checkout's modes are.
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
# Only what install() lists: never the build tree's tests or tools.
set(CPACK_SOURCE_IGNORE_FILES "/build[^/]*/;/\\\\.git/")

include(CPack)
