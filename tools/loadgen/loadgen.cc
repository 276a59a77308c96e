#include "loadgen.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <semaphore>
#include <thread>

#include <rapidjson/document.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include "http_client.h"
#include "report.h"

namespace hiapi::load {
namespace {

using namespace std::chrono_literals;

const char* const kTerminal[] = {"success", "fail",  "succeeded", "failed",
                                 "completed", "error", "cancelled", "timeout"};

bool isTerminal(const std::string& s) {
  return std::any_of(std::begin(kTerminal), std::end(kTerminal),
                     [&](const char* t) { return s == t; });
}

std::string dataField(const std::string& body, const char* field) {
  rapidjson::Document d;
  d.Parse(body.c_str(), body.size());
  if (d.HasParseError() || !d.IsObject()) {
    return {};
  }
  auto data = d.FindMember("data");
  if (data == d.MemberEnd() || !data->value.IsObject()) {
    return {};
  }
  auto f = data->value.FindMember(field);
  if (f == data->value.MemberEnd() || !f->value.IsString()) {
    return {};
  }
  return f->value.GetString();
}

/// Retry-After in seconds (integer or decimal; an HTTP-date counts as 1 s: the simulator and the
/// proxy send seconds). nullopt when absent or unreadable.
std::optional<double> retryAfter(const Response& r) {
  const std::string v = r.header("Retry-After");
  if (v.empty()) {
    return std::nullopt;
  }
  char* end = nullptr;
  const double s = std::strtod(v.c_str(), &end);
  if (end == v.c_str()) {
    return 1.0;
  }
  return std::max(0.0, s);
}

std::string jsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
    }
    out += c;
  }
  return out;
}

struct Client {
  std::string cls;
  std::string key;
  std::unique_ptr<std::counting_semaphore<1024>> all;    // guide: 5 tasks at a time
  std::unique_ptr<std::counting_semaphore<1024>> heavy;  // guide: 2 heavy tasks at a time
};

class Runner {
public:
  explicit Runner(const Options& o) : o_(o), target_() {}

  bool init(std::string* error) {
    if (!Endpoint::parse(o_.target, &target_, error)) {
      return false;
    }
    if (!o_.sim.empty() && !Endpoint::parse(o_.sim, &sim_, error)) {
      return false;
    }
    prefix_ = o_.prompt_prefix.empty()
                  ? "load-" + std::to_string(o_.seed) + "-" +
                        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                           std::chrono::system_clock::now().time_since_epoch())
                                           .count())
                  : o_.prompt_prefix;
    int global = 0;
    for (size_t g = 0; g < o_.groups.size(); ++g) {
      const Group& grp = o_.groups[g];
      for (int c = 0; c < grp.clients; ++c) {
        auto cl = std::make_unique<Client>();
        cl->cls = !grp.name.empty() ? grp.name
                  : !grp.class_names.empty()
                      ? grp.class_names[static_cast<size_t>(c) % grp.class_names.size()]
                      : "svc-" + std::to_string(c);
        cl->key = grp.key;
        if (grp.preset == Preset::Guide) {
          cl->all = std::make_unique<std::counting_semaphore<1024>>(5);
          cl->heavy = std::make_unique<std::counting_semaphore<1024>>(2);
        }
        const size_t cls_idx = classIndex(cl->cls);
        for (int t = 0; t < grp.tasks; ++t) {
          // Heavy tasks spread evenly over the group's tasks, in start order.
          const int gi = t * grp.clients + c;
          const double share = std::clamp(grp.heavy_share, 0.0, 1.0);
          const bool heavy = std::floor((gi + 1) * share) > std::floor(gi * share);
          TaskSpec ts;
          ts.group = g;
          ts.client = cl.get();
          ts.cls = cls_idx;
          ts.heavy = heavy;
          ts.start_s = grp.start_s + t * grp.create_interval_s;
          ts.prompt = prefix_ + "-" + std::to_string(g) + "-" + std::to_string(c) + "-" +
                      std::to_string(t);
          ts.seed = o_.seed * 1000003ULL + static_cast<uint64_t>(global++);
          specs_.push_back(ts);
        }
        clients_.push_back(std::move(cl));
      }
    }
    if (specs_.empty()) {
      *error = "no tasks to run";
      return false;
    }
    if (specs_.size() > 20000) {
      *error = "at most 20000 tasks (one thread each)";
      return false;
    }
    return true;
  }

  int run() {
    if (o_.sim_reset && !o_.sim.empty()) {
      HttpClient c(sim_);
      Response r = c.request("POST", "/__reset", {}, "", Clock::now() + 10s);
      if (r.status != 200) {
        std::fprintf(stderr, "hiapi-load: POST /__reset on the simulator failed (%d %s)\n",
                     r.status, r.error.c_str());
        return 2;
      }
    }
    results_.resize(specs_.size());
    start_ = Clock::now();
    start_unix_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
    deadline_ = start_ + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(o_.max_duration_s));
    std::vector<std::thread> threads;
    threads.reserve(specs_.size());
    for (size_t i = 0; i < specs_.size(); ++i) {
      threads.emplace_back([this, i] { runTask(i); });
    }
    for (auto& t : threads) {
      t.join();
    }
    const double wall_s = std::chrono::duration<double>(Clock::now() - start_).count();

    Report rep;
    rep.label = o_.label;
    rep.target = o_.target;
    rep.seed = o_.seed;
    rep.started_unix_ms = start_unix_ms_;
    rep.wall_s = wall_s;
    for (const Group& g : o_.groups) {
      rep.presets.push_back(presetName(g.preset));
    }
    rep.class_names = class_names_;
    rep.samples = std::move(samples_);
    rep.tasks = std::move(results_);
    if (!o_.sim.empty()) {
      HttpClient c(sim_);
      Response r = c.request("GET", "/__stats", {}, "", Clock::now() + 30s);
      if (r.status == 200) {
        rep.sim_stats_json = r.body;
      } else {
        std::fprintf(stderr, "hiapi-load: GET /__stats failed (%d %s)\n", r.status,
                     r.error.c_str());
      }
    }
    rep.compute();
    emit(rep, o_.json_path, o_.quiet);
    if (o_.fail_on_loss && (rep.unfinished > 0 || rep.lost > 0)) {
      return 1;
    }
    return 0;
  }

private:
  struct TaskSpec {
    size_t group = 0;
    Client* client = nullptr;
    size_t cls = 0;
    bool heavy = false;
    double start_s = 0;
    std::string prompt;
    uint64_t seed = 0;
  };

  size_t classIndex(const std::string& name) {
    auto it = std::find(class_names_.begin(), class_names_.end(), name);
    if (it != class_names_.end()) {
      return static_cast<size_t>(it - class_names_.begin());
    }
    class_names_.push_back(name);
    return class_names_.size() - 1;
  }

  bool sleepFor(double seconds) {
    const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(std::max(0.0, seconds)));
    std::this_thread::sleep_until(std::min(until, deadline_));
    return Clock::now() < deadline_;
  }

  double sinceStart() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

  void runTask(size_t i) {
    const TaskSpec& ts = specs_[i];
    const Group& grp = o_.groups[ts.group];
    TaskResult& res = results_[i];
    res.cls = ts.cls;
    res.heavy = ts.heavy;
    std::mt19937_64 rng(ts.seed);
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    std::vector<Sample> local;
    HttpClient http(target_);
    Headers hdr{{"Content-Type", "application/json"}, {"Accept", "application/json"},
                {"User-Agent", std::string("hiapi-load/") + presetName(grp.preset)},
                {"X-HiAPI-Client", ts.client->cls}};
    if (!ts.client->key.empty()) {
      hdr.emplace_back("Authorization", "Bearer " + ts.client->key);
    }
    const std::string body = R"({"model":")" + (ts.heavy ? o_.heavy_model : o_.light_model) +
                             R"(","input":{"prompt":")" + jsonEscape(ts.prompt) + R"("}})";

    auto exchange = [&](Route route, const std::string& method, const std::string& path,
                        const std::string& b) {
      const auto t0 = Clock::now();
      const auto dl = std::min(t0 + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(o_.timeout_s)),
                               deadline_);
      Response r = http.request(method, path, hdr, b, dl);
      Sample s;
      s.cls = static_cast<uint16_t>(ts.cls);
      s.route = route;
      s.status = r.status;
      s.ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      s.at_s = std::chrono::duration<double>(t0 - start_).count();
      s.proxy_error = !r.header("X-HiAPI-Proxy-Error").empty();
      const std::string cache = r.header("X-HiAPI-Proxy-Cache");
      s.cache = cache == "hit" ? 1 : cache == "coalesced" ? 2 : cache == "miss" ? 3 : 0;
      local.push_back(s);
      return r;
    };
    auto finish = [&] {
      std::lock_guard<std::mutex> lock(mu_);
      samples_.insert(samples_.end(), local.begin(), local.end());
    };

    if (!sleepFor(ts.start_s)) {
      res.outcome = Outcome::Unfinished;
      finish();
      return;
    }
    res.started_s = sinceStart();

    // guide: a per-client semaphore of 5 tasks, 2 of them heavy, held from create to the end.
    bool have_heavy = false, have_all = false;
    if (grp.preset == Preset::Guide) {
      if (ts.heavy) {
        have_heavy = ts.client->heavy->try_acquire_until(deadline_);
      }
      if (!ts.heavy || have_heavy) {
        have_all = ts.client->all->try_acquire_until(deadline_);
      }
      if (!have_all) {
        if (have_heavy) {
          ts.client->heavy->release();
        }
        res.outcome = Outcome::Unfinished;
        finish();
        return;
      }
    }
    auto releaseSems = [&] {
      if (have_all) {
        ts.client->all->release();
      }
      if (have_heavy) {
        ts.client->heavy->release();
      }
    };

    // Backoff of the guide: full jitter on 1 s · 2^attempt, capped at 30 s, never earlier than
    // Retry-After.
    auto guideDelay = [&](const Response& r, int attempt) {
      const double cap = std::min(30.0, std::ldexp(1.0, std::min(attempt, 10)));
      const double jitter = uni(rng) * cap;
      return std::min(30.0, std::max(retryAfter(r).value_or(0.0), jitter));
    };
    // The official SDKs: Retry-After clamped to 60 s, else 0.5 s, 1 s, 2 s ... without jitter.
    auto sdkDelay = [&](const Response& r, int attempt) {
      if (auto ra = retryAfter(r)) {
        return std::min(60.0, *ra);
      }
      return std::min(8.0, 0.5 * std::ldexp(1.0, attempt));
    };

    // ---- create -------------------------------------------------------------------------------
    const auto created_t0 = Clock::now();
    std::string task_id;
    for (int attempt = 0;; ++attempt) {
      if (Clock::now() >= deadline_) {
        res.outcome = Outcome::Unfinished;
        break;
      }
      ++res.create_attempts;
      Response r = exchange(Route::Create, "POST", "/v1/tasks", body);
      if (r.status == 200) {
        task_id = dataField(r.body, "taskId");
        if (!task_id.empty()) {
          break;
        }
      }
      const bool again = r.status == 429 || r.status >= 500 || r.status == 0;
      double delay = -1;
      switch (grp.preset) {
      case Preset::Naive:
        // A bare loop: anything that might pass later is sent again after the loop's 200 ms
        // sleep, ignoring Retry-After. (Even a POST that got no answer: that is how naive
        // clients make duplicate tasks.)
        delay = again ? 0.2 : -1;
        break;
      case Preset::Guide:
        delay = again ? guideDelay(r, attempt) : -1;
        break;
      case Preset::Sdk:
        // 2 retries on 429/503 only; a POST without Idempotency-Key is not retried after a
        // network error, and 500/502/504 are not retried at all.
        delay = (r.status == 429 || r.status == 503) && attempt < 2 ? sdkDelay(r, attempt) : -1;
        break;
      }
      if (delay < 0) {
        res.outcome = Outcome::CreateFailed;
        res.last_error = std::to_string(r.status) + " " +
                         (r.status == 0 ? r.error : r.body.substr(0, 160));
        break;
      }
      if (!sleepFor(delay)) {
        res.outcome = Outcome::Unfinished;
        break;
      }
    }
    if (task_id.empty()) {
      res.ended_s = sinceStart();
      releaseSems();
      finish();
      return;
    }
    res.created = true;
    res.created_s = sinceStart();
    res.create_ms = std::chrono::duration<double, std::milli>(Clock::now() - created_t0).count();

    // ---- poll until terminal ------------------------------------------------------------------
    const std::string path = "/v1/tasks/" + task_id;
    int guide_failures = 0;
    res.outcome = Outcome::Unfinished;
    for (;;) {
      double wait = 0.2;
      if (grp.preset == Preset::Guide) {
        wait = 2.0 + 3.0 * uni(rng);
      } else if (grp.preset == Preset::Sdk) {
        wait = 3.0;
      }
      if (!sleepFor(wait)) {
        break;
      }
      Response r = exchange(Route::Poll, "GET", path, "");
      if (grp.preset == Preset::Sdk) {
        // One SDK call = the request and up to 2 retries (429/503, and network errors on GET).
        for (int attempt = 0; attempt < 2 && (r.status == 429 || r.status == 503 || r.status == 0);
             ++attempt) {
          if (!sleepFor(sdkDelay(r, attempt))) {
            break;
          }
          r = exchange(Route::Poll, "GET", path, "");
        }
      }
      if (r.status == 200) {
        guide_failures = 0;
        const std::string st = dataField(r.body, "status");
        if (isTerminal(st)) {
          res.outcome = st == "success" || st == "succeeded" || st == "completed"
                            ? Outcome::Success
                            : Outcome::Fail;
          break;
        }
      } else if (grp.preset == Preset::Guide &&
                 (r.status == 429 || r.status >= 500 || r.status == 0)) {
        if (!sleepFor(guideDelay(r, guide_failures++))) {
          break;
        }
      }
    }
    res.ended_s = sinceStart();
    releaseSems();
    finish();
  }

  const Options& o_;
  Endpoint target_;
  Endpoint sim_;
  std::string prefix_;
  std::vector<std::unique_ptr<Client>> clients_;
  std::vector<TaskSpec> specs_;
  std::vector<std::string> class_names_;
  std::vector<TaskResult> results_;
  std::mutex mu_;
  std::vector<Sample> samples_;
  Clock::time_point start_;
  Clock::time_point deadline_;
  int64_t start_unix_ms_ = 0;
};

}  // namespace

std::optional<Preset> parsePreset(const std::string& s) {
  if (s == "naive") {
    return Preset::Naive;
  }
  if (s == "guide") {
    return Preset::Guide;
  }
  if (s == "sdk") {
    return Preset::Sdk;
  }
  return std::nullopt;
}

const char* presetName(Preset p) {
  switch (p) {
  case Preset::Naive:
    return "naive";
  case Preset::Guide:
    return "guide";
  case Preset::Sdk:
    return "sdk";
  }
  return "?";
}

bool parseSeconds(const std::string& text, double* seconds) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || !std::isfinite(v) || v < 0) {
    return false;
  }
  const std::string unit(end);
  double mul = 0;
  if (unit.empty() || unit == "s") {
    mul = 1;
  } else if (unit == "ms") {
    mul = 0.001;
  } else if (unit == "m" || unit == "min") {
    mul = 60;
  } else if (unit == "h") {
    mul = 3600;
  } else {
    return false;
  }
  *seconds = v * mul;
  return true;
}

int runTasks(const Options& o) {
  Runner r(o);
  std::string error;
  if (!r.init(&error)) {
    std::fprintf(stderr, "hiapi-load: %s\n", error.c_str());
    return 2;
  }
  return r.run();
}

}  // namespace hiapi::load
