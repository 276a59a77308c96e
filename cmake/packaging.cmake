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

# Debian: files under /etc are conffiles only when listed.
file(WRITE ${HIAPI_PKG_DIR}/conffiles "${HIAPI_ETC_DIR}/hiapi-proxy.yaml\n")

# ---- install rules -----------------------------------------------------------------------------
install(FILES ${CMAKE_SOURCE_DIR}/systemd/hiapi-proxy.service
        DESTINATION ${HIAPI_SYSTEMD_UNIT_DIR}
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
install(FILES ${HIAPI_PKG_DIR}/hiapi-proxy.yaml
        DESTINATION ${HIAPI_ETC_DIR}
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
    "A local daemon that services point their HiAPI base URL at. It forwards /v1/... to\n"
    "the HiAPI task API over verified TLS with one token bucket per key, per-model-tier\n"
    "concurrency gates, a bounded fair queue, 429 absorption with Retry-After, cached\n"
    "polls and Prometheus metrics. Runs as a hardened systemd service (Type=notify).")
string(REPLACE ";" "" CPACK_PACKAGE_DESCRIPTION "${CPACK_PACKAGE_DESCRIPTION}")
set(CPACK_PACKAGE_CONTACT "hiapi-proxy maintainers <hiapi-proxy@localhost>")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://api.hiapi.ai")
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
