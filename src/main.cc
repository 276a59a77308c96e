// hiapi-proxy: flags, configuration, and the daemon. Wiring only.

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "hiapi/core/config.h"
#include "hiapi/shell/daemon.h"
#include "hiapi/shell/log.h"
#include "hiapi/version.h"

namespace {

constexpr const char* kDefaultConfig = "/etc/hiapi-proxy/hiapi-proxy.yaml";

void usage(FILE* out) {
  std::fprintf(out,
               "Usage: hiapi-proxy [-c|--config PATH] [-t|--check-config [PATH]] [--print-config]\n"
               "                   [--port-file PATH] [--version] [-h|--help]\n"
               "\n"
               "A local rate-limiting proxy for the HiAPI task API: one token bucket per key,\n"
               "per-tier concurrency gates, a fair bounded queue, 429 absorption.\n"
               "\n"
               "  -c, --config PATH     configuration file (default %s);\n"
               "                        also --config=PATH\n"
               "  -t, --check-config [PATH]\n"
               "                        validate the configuration (every error, each with\n"
               "                        file:line:col and key), print a one-line summary, exit 0\n"
               "                        when valid and 1 when not (like nginx -t)\n"
               "      --print-config    print the effective configuration (defaults included,\n"
               "                        keys redacted) as YAML and exit; 1 when it is invalid\n"
               "      --port-file PATH  write the bound ports there (proxy=N, admin=N)\n"
               "      --version         print the version and exit\n"
               "  -h, --help            print this help and exit\n"
               "\n"
               "Signals: SIGHUP reloads the configuration, SIGTERM and SIGINT drain and stop.\n",
               kDefaultConfig);
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = kDefaultConfig;
  std::string port_file;
  bool check_only = false;
  bool print_config = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "hiapi-proxy: %s needs a value\n", flag);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    } else if (a == "--version") {
      std::printf("hiapi-proxy %s\n", HIAPI_PROXY_VERSION);
      return 0;
    } else if (a == "--config" || a == "-c") {
      config_path = value("--config");
    } else if (a.rfind("--config=", 0) == 0) {
      config_path = a.substr(std::strlen("--config="));
    } else if (a == "--check-config" || a == "-t") {
      check_only = true;
      if (i + 1 < argc && argv[i + 1][0] != '-') {
        config_path = argv[++i];
      }
    } else if (a == "--print-config") {
      print_config = true;
    } else if (a == "--port-file") {
      port_file = value("--port-file");
    } else {
      std::fprintf(stderr, "hiapi-proxy: unknown argument '%s'\n", a.c_str());
      usage(stderr);
      return 2;
    }
  }

  std::shared_ptr<const hiapi::core::Config> cfg;
  try {
    cfg = std::make_shared<const hiapi::core::Config>(hiapi::core::loadConfig(config_path));
  } catch (const hiapi::core::ConfigError& e) {
    for (const hiapi::core::ConfigError& one : e.all()) {
      std::fprintf(stderr, "hiapi-proxy: %s\n", one.what());
    }
    if (check_only || print_config) {
      std::fprintf(stderr, "hiapi-proxy: configuration %s is invalid\n", config_path.c_str());
    }
    return 1;
  }
  if (check_only) {
    std::printf("%s: %s\n", config_path.c_str(), cfg->summary().c_str());
    return 0;
  }
  if (print_config) {
    std::printf("# effective configuration of %s (keys redacted)\n%s", config_path.c_str(),
                cfg->dump().c_str());
    return 0;
  }
  hiapi::shell::Logger log(cfg->log.format, cfg->log.level);
  hiapi::shell::Daemon daemon({config_path, port_file}, cfg, log);
  return daemon.run();
}
