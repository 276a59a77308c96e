#include "report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include <rapidjson/document.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

namespace hiapi::load {
namespace {

using Writer = rapidjson::PrettyWriter<rapidjson::StringBuffer>;

int64_t intAt(const rapidjson::Value& v, std::initializer_list<const char*> path) {
  const rapidjson::Value* cur = &v;
  for (const char* p : path) {
    if (!cur->IsObject()) {
      return 0;
    }
    auto it = cur->FindMember(p);
    if (it == cur->MemberEnd()) {
      return 0;
    }
    cur = &it->value;
  }
  return cur->IsInt64() ? cur->GetInt64() : cur->IsNumber() ? static_cast<int64_t>(cur->GetDouble()) : 0;
}

void writePct(Writer& w, const char* name, const Percentiles& p) {
  w.Key(name);
  w.StartObject();
  w.Key("n");
  w.Uint64(p.n);
  w.Key("p50");
  w.Double(std::round(p.p50 * 10) / 10);
  w.Key("p95");
  w.Double(std::round(p.p95 * 10) / 10);
  w.Key("p99");
  w.Double(std::round(p.p99 * 10) / 10);
  w.Key("max");
  w.Double(std::round(p.max * 10) / 10);
  w.EndObject();
}

std::string fmtMs(double ms) {
  char b[32];
  if (ms >= 10000) {
    std::snprintf(b, sizeof b, "%.1fs", ms / 1000);
  } else {
    std::snprintf(b, sizeof b, "%.0fms", ms);
  }
  return b;
}

std::string fmtPct(const Percentiles& p) {
  if (p.n == 0) {
    return "-";
  }
  return fmtMs(p.p50) + "/" + fmtMs(p.p95) + "/" + fmtMs(p.p99) + "/" + fmtMs(p.max);
}

}  // namespace

Percentiles Percentiles::of(std::vector<double> v) {
  Percentiles p;
  p.n = v.size();
  if (v.empty()) {
    return p;
  }
  std::sort(v.begin(), v.end());
  // Nearest rank: the smallest value with at least q of the samples at or below it.
  auto at = [&](double q) {
    const size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
    return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
  };
  p.p50 = at(0.50);
  p.p95 = at(0.95);
  p.p99 = at(0.99);
  p.max = v.back();
  return p;
}

void Report::compute() {
  classes.resize(class_names.size());
  for (size_t i = 0; i < class_names.size(); ++i) {
    classes[i].name = class_names[i];
  }
  std::vector<double> v_all, v_create, v_poll;
  std::vector<std::vector<double>> c_all(classes.size()), c_create(classes.size()),
      c_poll(classes.size()), c_id(classes.size()), c_turn(classes.size());
  for (const Sample& s : samples) {
    ClassSummary& c = classes[s.cls];
    ++requests;
    ++c.requests;
    ++by_status[s.status];
    if (s.status == 429) {
      ++status_429;
      ++c.status_429;
    } else if (s.status < 200 || s.status > 299) {
      ++errors;
      ++c.errors;
    }
    if (s.status == 0) {
      ++no_answer;
      ++c.no_answer;
    }
    if (s.proxy_error) {
      ++proxy_errors;
      ++c.proxy_errors;
    }
    cache_hit += s.cache == 1;
    cache_coalesced += s.cache == 2;
    cache_miss += s.cache == 3;
    v_all.push_back(s.ms);
    c_all[s.cls].push_back(s.ms);
    if (s.route == Route::Create) {
      v_create.push_back(s.ms);
      c_create[s.cls].push_back(s.ms);
    } else if (s.route == Route::Poll) {
      v_poll.push_back(s.ms);
      c_poll[s.cls].push_back(s.ms);
    }
  }
  lost = no_answer;
  makespan_s = 0;
  for (const TaskResult& t : tasks) {
    ClassSummary& c = classes[t.cls];
    ++c.tasks;
    makespan_s = std::max(makespan_s, t.ended_s);
    switch (t.outcome) {
    case Outcome::Success:
      ++success;
      ++c.success;
      break;
    case Outcome::Fail:
      ++fail;
      ++c.fail;
      break;
    case Outcome::CreateFailed:
      ++create_failed;
      ++c.create_failed;
      break;
    case Outcome::Unfinished:
      ++unfinished;
      ++c.unfinished;
      break;
    }
    if (t.created) {
      c_id[t.cls].push_back(t.create_ms);
      if (t.outcome == Outcome::Success || t.outcome == Outcome::Fail) {
        c_turn[t.cls].push_back((t.ended_s - t.started_s) * 1000);
      }
    }
  }
  complete = unfinished == 0 && create_failed == 0;
  if (unfinished > 0) {
    makespan_s = std::max(makespan_s, wall_s);
  }
  all = Percentiles::of(std::move(v_all));
  create = Percentiles::of(std::move(v_create));
  poll = Percentiles::of(std::move(v_poll));
  for (size_t i = 0; i < classes.size(); ++i) {
    classes[i].all = Percentiles::of(std::move(c_all[i]));
    classes[i].create = Percentiles::of(std::move(c_create[i]));
    classes[i].poll = Percentiles::of(std::move(c_poll[i]));
    classes[i].create_to_id = Percentiles::of(std::move(c_id[i]));
    classes[i].turnaround = Percentiles::of(std::move(c_turn[i]));
  }

  if (!sim_stats_json.empty()) {
    rapidjson::Document d;
    d.Parse(sim_stats_json.c_str(), sim_stats_json.size());
    if (!d.HasParseError() && d.IsObject()) {
      sim.present = true;
      sim.requests = intAt(d, {"requests", "total"});
      sim.rejected_rate = intAt(d, {"rejected_429", "rate"});
      sim.rejected_concurrency = intAt(d, {"rejected_429", "concurrency"});
      sim.tasks_created = intAt(d, {"tasks_created"});
      sim.duplicate_creations = intAt(d, {"duplicate_creations"});
      sim.tasks_last_end_ms = intAt(d, {"tasks_last_end_ms"});
      sim.heavy_max_running = intAt(d, {"tiers", "heavy", "max_running_per_key"});
      sim.light_max_running = intAt(d, {"tiers", "light", "max_running_per_key"});
      auto keys = d.FindMember("keys");
      if (keys != d.MemberEnd() && keys->value.IsObject()) {
        for (auto& k : keys->value.GetObject()) {
          sim.max_admitted_1s = std::max(sim.max_admitted_1s, intAt(k.value, {"max_admitted_1s"}));
        }
      }
      auto bs = d.FindMember("requests");
      if (bs != d.MemberEnd() && bs->value.IsObject()) {
        auto m = bs->value.FindMember("by_status");
        if (m != bs->value.MemberEnd() && m->value.IsObject()) {
          for (auto& e : m->value.GetObject()) {
            sim.by_status[e.name.GetString()] = e.value.IsInt64() ? e.value.GetInt64() : 0;
          }
        }
      }
    }
  }
}

void emit(const Report& r, const std::string& json_path, bool quiet) {
  FILE* out = json_path == "-" ? stderr : stdout;
  if (!quiet) {
    std::fprintf(out, "hiapi-load %s → %s  (presets:", r.label.c_str(), r.target.c_str());
    for (const auto& p : r.presets) {
      std::fprintf(out, " %s", p.c_str());
    }
    std::fprintf(out, ", seed %llu)\n", static_cast<unsigned long long>(r.seed));
    std::fprintf(out,
                 "makespan %.2f s%s | tasks %zu: %lld success, %lld fail, %lld create failed, "
                 "%lld unfinished\n",
                 r.makespan_s, r.complete ? "" : " (INCOMPLETE)", r.tasks.size(),
                 static_cast<long long>(r.success), static_cast<long long>(r.fail),
                 static_cast<long long>(r.create_failed), static_cast<long long>(r.unfinished));
    std::fprintf(out,
                 "client requests %lld: %lld x 429, %lld other errors (%lld unanswered), %lld "
                 "proxy-made | cache hit %lld, coalesced %lld, miss %lld\n",
                 static_cast<long long>(r.requests), static_cast<long long>(r.status_429),
                 static_cast<long long>(r.errors), static_cast<long long>(r.no_answer),
                 static_cast<long long>(r.proxy_errors), static_cast<long long>(r.cache_hit),
                 static_cast<long long>(r.cache_coalesced), static_cast<long long>(r.cache_miss));
    if (r.sim.present) {
      const int64_t u429 = r.sim.rejected_rate + r.sim.rejected_concurrency;
      std::fprintf(out,
                   "upstream (hiapi-sim) requests %lld: %lld x 429 (%.1f%%; rate %lld, "
                   "concurrency %lld), busiest 1 s %lld, tasks created %lld, duplicates %lld, "
                   "max running heavy %lld light %lld\n",
                   static_cast<long long>(r.sim.requests), static_cast<long long>(u429),
                   r.sim.requests > 0 ? 100.0 * static_cast<double>(u429) /
                                            static_cast<double>(r.sim.requests)
                                      : 0.0,
                   static_cast<long long>(r.sim.rejected_rate),
                   static_cast<long long>(r.sim.rejected_concurrency),
                   static_cast<long long>(r.sim.max_admitted_1s),
                   static_cast<long long>(r.sim.tasks_created),
                   static_cast<long long>(r.sim.duplicate_creations),
                   static_cast<long long>(r.sim.heavy_max_running),
                   static_cast<long long>(r.sim.light_max_running));
    }
    std::fprintf(out, "%-14s %6s %5s %5s %5s  %-30s %-30s %-30s\n", "class", "reqs", "429",
                 "err", "tasks", "create p50/p95/p99/max", "poll p50/p95/p99/max",
                 "create→id p50/p95/p99/max");
    for (const ClassSummary& c : r.classes) {
      std::fprintf(out, "%-14s %6lld %5lld %5lld %5lld  %-30s %-30s %-30s\n", c.name.c_str(),
                   static_cast<long long>(c.requests), static_cast<long long>(c.status_429),
                   static_cast<long long>(c.errors), static_cast<long long>(c.tasks),
                   fmtPct(c.create).c_str(), fmtPct(c.poll).c_str(),
                   fmtPct(c.create_to_id).c_str());
    }
    for (const TaskResult& t : r.tasks) {
      if (!t.last_error.empty()) {
        std::fprintf(out, "first create failure: %s\n", t.last_error.c_str());
        break;
      }
    }
  }
  if (json_path.empty()) {
    return;
  }
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.SetMaxDecimalPlaces(3);
  w.StartObject();
  w.Key("label");
  w.String(r.label.c_str());
  w.Key("target");
  w.String(r.target.c_str());
  w.Key("presets");
  w.StartArray();
  for (const auto& p : r.presets) {
    w.String(p.c_str());
  }
  w.EndArray();
  w.Key("seed");
  w.Uint64(r.seed);
  w.Key("started_unix_ms");
  w.Int64(r.started_unix_ms);
  w.Key("makespan_s");
  w.Double(r.makespan_s);
  w.Key("complete");
  w.Bool(r.complete);
  w.Key("tasks");
  w.StartObject();
  w.Key("total");
  w.Uint64(r.tasks.size());
  w.Key("success");
  w.Int64(r.success);
  w.Key("fail");
  w.Int64(r.fail);
  w.Key("create_failed");
  w.Int64(r.create_failed);
  w.Key("unfinished");
  w.Int64(r.unfinished);
  w.EndObject();
  w.Key("requests");
  w.StartObject();
  w.Key("total");
  w.Int64(r.requests);
  w.Key("status_429");
  w.Int64(r.status_429);
  w.Key("errors");
  w.Int64(r.errors);
  w.Key("no_answer");
  w.Int64(r.no_answer);
  w.Key("proxy_errors");
  w.Int64(r.proxy_errors);
  w.Key("by_status");
  w.StartObject();
  for (const auto& [st, n] : r.by_status) {
    w.Key(std::to_string(st).c_str());
    w.Int64(n);
  }
  w.EndObject();
  w.Key("cache");
  w.StartObject();
  w.Key("hit");
  w.Int64(r.cache_hit);
  w.Key("coalesced");
  w.Int64(r.cache_coalesced);
  w.Key("miss");
  w.Int64(r.cache_miss);
  w.EndObject();
  w.EndObject();
  w.Key("latency_ms");
  w.StartObject();
  writePct(w, "all", r.all);
  writePct(w, "create", r.create);
  writePct(w, "poll", r.poll);
  w.EndObject();
  w.Key("classes");
  w.StartObject();
  for (const ClassSummary& c : r.classes) {
    w.Key(c.name.c_str());
    w.StartObject();
    w.Key("requests");
    w.Int64(c.requests);
    w.Key("status_429");
    w.Int64(c.status_429);
    w.Key("errors");
    w.Int64(c.errors);
    w.Key("no_answer");
    w.Int64(c.no_answer);
    w.Key("proxy_errors");
    w.Int64(c.proxy_errors);
    w.Key("tasks");
    w.StartObject();
    w.Key("total");
    w.Int64(c.tasks);
    w.Key("success");
    w.Int64(c.success);
    w.Key("fail");
    w.Int64(c.fail);
    w.Key("create_failed");
    w.Int64(c.create_failed);
    w.Key("unfinished");
    w.Int64(c.unfinished);
    w.EndObject();
    w.Key("latency_ms");
    w.StartObject();
    writePct(w, "all", c.all);
    writePct(w, "create", c.create);
    writePct(w, "poll", c.poll);
    w.EndObject();
    writePct(w, "create_to_id_ms", c.create_to_id);
    writePct(w, "turnaround_ms", c.turnaround);
    w.EndObject();
  }
  w.EndObject();
  w.Key("sim");
  if (!r.sim.present) {
    w.Null();
  } else {
    w.StartObject();
    w.Key("requests");
    w.Int64(r.sim.requests);
    w.Key("rejected_429");
    w.Int64(r.sim.rejected_rate + r.sim.rejected_concurrency);
    w.Key("rejected_rate");
    w.Int64(r.sim.rejected_rate);
    w.Key("rejected_concurrency");
    w.Int64(r.sim.rejected_concurrency);
    w.Key("upstream_429_pct");
    w.Double(r.sim.requests > 0 ? 100.0 * static_cast<double>(r.sim.rejected_rate +
                                                              r.sim.rejected_concurrency) /
                                      static_cast<double>(r.sim.requests)
                                : 0.0);
    w.Key("max_admitted_1s");
    w.Int64(r.sim.max_admitted_1s);
    w.Key("tasks_created");
    w.Int64(r.sim.tasks_created);
    w.Key("duplicate_creations");
    w.Int64(r.sim.duplicate_creations);
    w.Key("tasks_last_end_s");
    w.Double(static_cast<double>(r.sim.tasks_last_end_ms) / 1000.0);
    w.Key("heavy_max_running_per_key");
    w.Int64(r.sim.heavy_max_running);
    w.Key("light_max_running_per_key");
    w.Int64(r.sim.light_max_running);
    w.Key("by_status");
    w.StartObject();
    for (const auto& [st, n] : r.sim.by_status) {
      w.Key(st.c_str());
      w.Int64(n);
    }
    w.EndObject();
    w.EndObject();
  }
  w.EndObject();
  if (json_path == "-") {
    std::fwrite(sb.GetString(), 1, sb.GetSize(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
  } else {
    std::ofstream f(json_path);
    f << sb.GetString() << '\n';
    if (!f) {
      std::fprintf(stderr, "hiapi-load: cannot write %s\n", json_path.c_str());
    }
  }
}

}  // namespace hiapi::load
