#include "workload.h"

#include <atomic>
#include <csignal>
#include <fstream>
#include <thread>

#include <sys/wait.h>
#include <unistd.h>

namespace hiapi::test {
namespace {


ClientResult runOne(uint16_t port, const ClientSpec& spec) {
  ClientResult total;
  std::mutex mu;
  std::vector<std::thread> threads;
  const auto deadline = std::chrono::steady_clock::now() + spec.give_up;
  for (int i = 0; i < spec.tasks; ++i) {
    threads.emplace_back([&, i] {
      ClientResult r;
      std::vector<std::pair<std::string, std::string>> hdr{{"Content-Type", "application/json"}};
      if (!spec.key.empty()) {
        hdr.emplace_back("Authorization", "Bearer " + spec.key);
      }
      if (!spec.name.empty()) {
        hdr.emplace_back("X-HiAPI-Client", spec.name);
      }
      const bool heavy = spec.heavy_every > 0 && i % spec.heavy_every == 0;
      const std::string model = heavy ? "seedance-2-0" : "gpt-image-2";
      const std::string body = R"({"model":")" + model + R"(","input":{"prompt":")" +
                               spec.prompt_prefix + spec.name + "-task-" + std::to_string(i) +
                               R"("}})";
      auto note = [&](const HttpResponse& resp) {
        ++r.requests;
        if (resp.status == 429) {
          ++r.status_429;
        } else if (resp.status < 200 || resp.status >= 300) {
          ++r.other_errors;
          if (r.first_error.empty()) {
            r.first_error = std::to_string(resp.status) + " " + resp.body.substr(0, 200);
          }
        }
      };
      HttpResponse created = httpRequest(port, "POST", "/v1/tasks", hdr, body, 70000ms);
      note(created);
      const std::string task = created.status == 200 ? dataField(created.body, "taskId") : "";
      if (!task.empty()) {
        ++r.creates_ok;
        bool finished = false;
        while (!finished && std::chrono::steady_clock::now() < deadline) {
          std::this_thread::sleep_for(spec.poll_interval);
          HttpResponse p = httpRequest(port, "GET", "/v1/tasks/" + task, hdr, {}, 70000ms);
          note(p);
          const std::string cache = p.header("X-HiAPI-Proxy-Cache");
          r.cache_hits += cache == "hit";
          r.coalesced += cache == "coalesced";
          r.misses += cache == "miss";
          const std::string st = p.status == 200 ? dataField(p.body, "status") : "";
          if (st == "success") {
            ++r.done_success;
            finished = true;
          } else if (st == "fail") {
            ++r.done_fail;
            finished = true;
          }
        }
        r.unfinished += finished ? 0 : 1;
      }
      std::lock_guard<std::mutex> lock(mu);
      total.creates_ok += r.creates_ok;
      total.done_success += r.done_success;
      total.done_fail += r.done_fail;
      total.status_429 += r.status_429;
      total.other_errors += r.other_errors;
      total.requests += r.requests;
      total.cache_hits += r.cache_hits;
      total.coalesced += r.coalesced;
      total.misses += r.misses;
      total.unfinished += r.unfinished;
      if (total.first_error.empty()) {
        total.first_error = r.first_error;
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  return total;
}

}  // namespace

ClientTotals sum(const std::vector<ClientResult>& rs) {
  ClientTotals t;
  for (const auto& r : rs) {
    t.creates_ok += r.creates_ok;
    t.done += r.done_success + r.done_fail;
    t.c429 += r.status_429;
    t.errors += r.other_errors;
    t.unfinished += r.unfinished;
    t.requests += r.requests;
    if (t.first_error.empty()) {
      t.first_error = r.first_error;
    }
  }
  return t;
}

std::vector<ClientResult> runClients(uint16_t proxy_port, const std::vector<ClientSpec>& specs,
                                     const TempDir& dir) {
  std::vector<pid_t> pids;
  for (size_t i = 0; i < specs.size(); ++i) {
    const pid_t pid = fork();
    if (pid == 0) {
      ClientResult r = runOne(specs[i].port != 0 ? specs[i].port : proxy_port, specs[i]);
      std::ofstream f(dir.file("client-" + std::to_string(i) + ".result"));
      f << r.creates_ok << ' ' << r.done_success << ' ' << r.done_fail << ' ' << r.status_429
        << ' ' << r.other_errors << ' ' << r.requests << ' ' << r.cache_hits << ' '
        << r.coalesced << ' ' << r.misses << ' ' << r.unfinished << '\n'
        << r.first_error << '\n';
      f.close();
      _exit(0);
    }
    pids.push_back(pid);
  }
  std::vector<ClientResult> out(specs.size());
  for (size_t i = 0; i < pids.size(); ++i) {
    int st = 0;
    waitpid(pids[i], &st, 0);
    std::ifstream f(dir.file("client-" + std::to_string(i) + ".result"));
    ClientResult& r = out[i];
    f >> r.creates_ok >> r.done_success >> r.done_fail >> r.status_429 >> r.other_errors >>
        r.requests >> r.cache_hits >> r.coalesced >> r.misses >> r.unfinished;
    std::getline(f, r.first_error);
    std::getline(f, r.first_error);
  }
  return out;
}

std::string dataField(const std::string& body, const std::string& name) {
  rapidjson::Document d;
  d.Parse(body.c_str());
  if (d.HasParseError() || !d.IsObject()) {
    return {};
  }
  auto data = d.FindMember("data");
  if (data == d.MemberEnd() || !data->value.IsObject()) {
    return {};
  }
  auto f = data->value.FindMember(name.c_str());
  if (f == data->value.MemberEnd() || !f->value.IsString()) {
    return {};
  }
  return f->value.GetString();
}

rapidjson::Document simStats(uint16_t sim_port) {
  rapidjson::Document d;
  HttpResponse r = httpRequest(sim_port, "GET", "/__stats");
  d.Parse(r.body.c_str());
  return d;
}

int64_t jsonInt(const rapidjson::Value& v, std::initializer_list<const char*> path) {
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
  return cur->IsInt64() ? cur->GetInt64() : (cur->IsNumber() ? static_cast<int64_t>(cur->GetDouble()) : 0);
}

}  // namespace hiapi::test
