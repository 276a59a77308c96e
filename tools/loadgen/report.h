#pragma once
// What hiapi-load measured, summarised as a table (stdout) and as JSON (--json).

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace hiapi::load {

enum class Route : uint8_t { Create = 0, Poll = 1, Other = 2 };
enum class Outcome : uint8_t { Unfinished, Success, Fail, CreateFailed };

/// One HTTP exchange as the client saw it.
struct Sample {
  uint16_t cls = 0;
  Route route = Route::Other;
  int status = 0;          ///< 0 = no answer
  bool proxy_error = false;
  uint8_t cache = 0;       ///< X-HiAPI-Proxy-Cache: 0 none, 1 hit, 2 coalesced, 3 miss
  double ms = 0;
  double at_s = 0;         ///< when it was sent, seconds after the start
};

struct TaskResult {
  size_t cls = 0;
  bool heavy = false;
  bool created = false;
  Outcome outcome = Outcome::Unfinished;
  int create_attempts = 0;
  double create_ms = 0;    ///< first create attempt → task id (retries and backoff included)
  double started_s = 0, created_s = 0, ended_s = 0;
  std::string last_error;
};

struct Percentiles {
  size_t n = 0;
  double p50 = 0, p95 = 0, p99 = 0, max = 0;
  static Percentiles of(std::vector<double> v);
};

struct SimSummary {
  bool present = false;
  int64_t requests = 0, rejected_rate = 0, rejected_concurrency = 0, max_admitted_1s = 0,
          tasks_created = 0, duplicate_creations = 0, tasks_last_end_ms = 0, heavy_max_running = 0,
          light_max_running = 0;
  std::map<std::string, int64_t> by_status;
};

struct ClassSummary {
  std::string name;
  int64_t requests = 0, status_429 = 0, errors = 0, no_answer = 0, proxy_errors = 0;
  int64_t tasks = 0, success = 0, fail = 0, create_failed = 0, unfinished = 0;
  Percentiles all, create, poll, create_to_id, turnaround;
};

struct Report {
  std::string label, target;
  std::vector<std::string> presets;
  uint64_t seed = 0;
  int64_t started_unix_ms = 0;
  double wall_s = 0;
  std::vector<std::string> class_names;
  std::vector<Sample> samples;
  std::vector<TaskResult> tasks;
  std::string sim_stats_json;

  // computed
  double makespan_s = 0;   ///< start → the last task's end (terminal seen by its client)
  bool complete = false;   ///< every task ended (success or fail) before --max-duration
  int64_t requests = 0, status_429 = 0, errors = 0, no_answer = 0, proxy_errors = 0;
  int64_t cache_hit = 0, cache_coalesced = 0, cache_miss = 0;
  int64_t success = 0, fail = 0, create_failed = 0, unfinished = 0, lost = 0;
  std::map<int, int64_t> by_status;
  Percentiles all, create, poll;
  std::vector<ClassSummary> classes;
  SimSummary sim;

  void compute();
};

/// Prints the table (stdout, or stderr when the JSON goes to stdout) and writes the JSON.
void emit(const Report& r, const std::string& json_path, bool quiet);

}  // namespace hiapi::load
