#pragma once
// hiapi-load: service-like clients that create HiAPI tasks and poll them to the end, with the
// client behaviours of issue 8 (presets naive, guide, sdk), and a "hold" mode that parks many
// connections at once. See README.md.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hiapi::load {

enum class Preset { Naive, Guide, Sdk };

std::optional<Preset> parsePreset(const std::string& s);
const char* presetName(Preset p);

/// Durations like `200ms`, `3s`, `1.5m`, or a bare number of seconds.
bool parseSeconds(const std::string& text, double* seconds);

/// One kind of service: `clients` processes-worth of clients, each with `tasks` tasks.
struct Group {
  std::string name;                 ///< X-HiAPI-Client of its clients ("" = per-client names)
  std::vector<std::string> class_names;  ///< client i gets class_names[i % size] when name = ""
  int clients = 1;
  int tasks = 10;                   ///< per client
  Preset preset = Preset::Naive;
  double heavy_share = 1.0 / 3;     ///< spread evenly over the group's tasks
  double create_interval_s = 0;     ///< per client, spacing of task starts (0 = all at once)
  double start_s = 0;               ///< offset of the group's first task
  std::string key;
};

struct Options {
  std::string target;               ///< http://host:port
  std::string sim;                  ///< simulator for /__stats ("" = none)
  bool sim_reset = false;
  std::vector<Group> groups;
  std::string heavy_model = "seedance-2-0";
  std::string light_model = "gpt-image-2";
  uint64_t seed = 1;
  double max_duration_s = 300;
  double timeout_s = 60;            ///< per request (the SDK's 60 s)
  std::string prompt_prefix;        ///< "" = derived from seed and time
  std::string label;
  std::string json_path;            ///< "" = none, "-" = stdout (table then goes to stderr)
  bool quiet = false;
  bool fail_on_loss = false;        ///< exit 1 if a task did not end or was lost
  // hold mode
  int hold = 0;                     ///< > 0: open this many connections at once instead
  std::string hold_method = "GET";
  std::string hold_path = "/v1/tasks?page=1&size=1";
  std::string hold_deadline;        ///< X-HiAPI-Deadline value ("" = none)
  double hold_connect_rate = 0;     ///< connections per second (0 = as fast as possible)
};

/// @return the process exit code.
int runTasks(const Options& o);
int runHold(const Options& o);

}  // namespace hiapi::load
