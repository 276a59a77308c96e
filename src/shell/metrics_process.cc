// The scrape: the registry's families plus the process metrics, read from /proc/self at scrape
// time. Kept apart from metrics.cc because it reads the operating system, not the proxy, and
// owns no series.

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include "hiapi/shell/metrics.h"

namespace hiapi::shell {
namespace {

struct ProcessSample {
  double cpu = 0, resident = 0, virtual_mem = 0, open_fds = 0, max_fds = 0, start_time = 0;
};

// The process's start, taken when the library is loaded (before main): reading the boot time
// from /proc/stat would rule out systemd's ProcSubset=pid hardening.
const double kProcessStartWall =
    std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();

ProcessSample sampleProcess() {
  ProcessSample s;
  static const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  static const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  std::ifstream f("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  if (paren != std::string::npos && ticks > 0) {
    std::istringstream in(stat.substr(paren + 1));
    std::vector<std::string> fields{std::istream_iterator<std::string>(in),
                                    std::istream_iterator<std::string>()};
    // fields[0] is field 3 (state) of proc(5): utime 14, stime 15, starttime 22, vsize 23, rss 24.
    if (fields.size() > 21) {
      s.cpu = (std::strtod(fields[11].c_str(), nullptr) +
               std::strtod(fields[12].c_str(), nullptr)) /
              ticks;
      s.start_time = kProcessStartWall;
      s.virtual_mem = std::strtod(fields[20].c_str(), nullptr);
      s.resident = std::strtod(fields[21].c_str(), nullptr) * page;
    }
  }
  std::error_code ec;
  size_t fds = 0;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end;
       it.increment(ec)) {
    ++fds;
  }
  s.open_fds = static_cast<double>(fds);
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0) {
    s.max_fds = lim.rlim_cur == RLIM_INFINITY ? 0 : static_cast<double>(lim.rlim_cur);
  }
  return s;
}

prometheus::MetricFamily processFamily(const char* name, const char* help,
                                       prometheus::MetricType type, double value) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
  return f;
}

}  // namespace

std::string Metrics::serialize() {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  const ProcessSample p = sampleProcess();
#define HIAPI_PROCESS_FAMILY(member, Type, name, help) \
  families.push_back(processFamily(name, help, prometheus::Type::metric_type, p.member));
  HIAPI_PROCESS_METRICS(HIAPI_PROCESS_FAMILY)
#undef HIAPI_PROCESS_FAMILY
  return prometheus::TextSerializer{}.Serialize(families);
}

}  // namespace hiapi::shell
