// hiapi-load: flags and wiring only. See README.md and --help.

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

#include "loadgen.h"

namespace {

using hiapi::load::Group;
using hiapi::load::Options;

const char kHelp[] = R"(hiapi-load: service-like HiAPI clients that create tasks and poll them to the end

usage: hiapi-load --target http://127.0.0.1:PORT [options]
       hiapi-load --target URL --hold N [hold options]

Tasks mode (one thread per task; every task a unique input.prompt):
  --target URL          http://host:port of hiapi-sim, nginx or hiapi-proxy (required)
  --sim URL             hiapi-sim to read /__stats from at the end (upstream view)
  --sim-reset           POST /__reset to --sim before starting
  --preset P            naive | guide | sdk (default naive), see README.md
  --clients N           clients (default 1)
  --tasks N             tasks per client (default 10)
  --heavy-share F       share of heavy tasks, spread evenly (default 0.333)
  --heavy-model M       default seedance-2-0
  --light-model M       default gpt-image-2
  --class-names A,B     X-HiAPI-Client of client i = names[i % n] (default svc-<i>)
  --create-interval D   per client, time between task starts (default 0: all at once)
  --key K               bearer key (default sk-hiapi-load-0001; "" = no Authorization)
  --group SPEC          a kind of client, repeatable; SPEC is comma-separated key=value:
                        name, clients, tasks, preset, heavy, interval, start, key
                        e.g. --group name=flood,tasks=60,preset=naive,heavy=0
                        (the flags above are the defaults of every group)
  --seed N              jitter and prompts (default 1)
  --max-duration D      stop everything after D (default 300s); unfinished tasks are counted
  --timeout D           per request (default 60s, the official SDKs' timeout)
  --prompt-prefix S     default load-<seed>-<unix ms>
  --label S             name of the run in the report
  --json PATH           write the report as JSON ("-" = stdout; the table then goes to stderr)
  --fail-on-loss        exit 1 if a task did not end or a request got no answer
  --quiet               no table

Hold mode (one thread, epoll): N connections at once, one request each, every answer counted:
  --hold N              connections
  --hold-method M       GET (default) or POST (a light-model create with a unique prompt)
  --hold-path P         default /v1/tasks?page=1&size=1
  --hold-deadline D     X-HiAPI-Deadline header value (e.g. 20s)
  --hold-rate R         open R connections per second (default: all at once)
  (--key, --group name=..., --max-duration, --json, --label apply too; exit 1 on any loss)

Durations: 200ms, 3s, 1.5m, or bare seconds.
)";

bool parseGroup(const std::string& spec, Group* g, std::string* error) {
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos) {
      *error = "--group: expected key=value, got '" + item + "'";
      return false;
    }
    const std::string k = item.substr(0, eq);
    const std::string v = item.substr(eq + 1);
    bool ok = true;
    if (k == "name") {
      g->name = v;
    } else if (k == "clients") {
      g->clients = std::atoi(v.c_str());
      ok = g->clients > 0;
    } else if (k == "tasks") {
      g->tasks = std::atoi(v.c_str());
      ok = g->tasks >= 0;
    } else if (k == "preset") {
      auto p = hiapi::load::parsePreset(v);
      ok = p.has_value();
      if (ok) {
        g->preset = *p;
      }
    } else if (k == "heavy") {
      g->heavy_share = std::atof(v.c_str());
      ok = g->heavy_share >= 0 && g->heavy_share <= 1;
    } else if (k == "interval") {
      ok = hiapi::load::parseSeconds(v, &g->create_interval_s);
    } else if (k == "start") {
      ok = hiapi::load::parseSeconds(v, &g->start_s);
    } else if (k == "key") {
      g->key = v;
    } else {
      *error = "--group: unknown key '" + k + "'";
      return false;
    }
    if (!ok) {
      *error = "--group: bad value for " + k + ": '" + v + "'";
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  Options o;
  Group defaults;
  defaults.key = "sk-hiapi-load-0001";
  std::vector<std::string> group_specs;
  std::string error;
  auto need = [&](int& i, const char* flag) -> const char* {
    if (i + 1 >= argc) {
      error = std::string(flag) + " needs a value";
      return nullptr;
    }
    return argv[++i];
  };
  for (int i = 1; i < argc && error.empty(); ++i) {
    std::string a = argv[i];
    std::string inline_value;
    bool has_inline = false;
    if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) {
      inline_value = a.substr(a.find('=') + 1);
      a = a.substr(0, a.find('='));
      has_inline = true;
    }
    auto value = [&]() -> std::string {
      if (has_inline) {
        return inline_value;
      }
      const char* v = need(i, a.c_str());
      return v == nullptr ? std::string() : std::string(v);
    };
    auto seconds = [&](double* out) {
      const std::string v = value();
      if (error.empty() && !hiapi::load::parseSeconds(v, out)) {
        error = a + ": bad duration '" + v + "'";
      }
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    } else if (a == "--target") {
      o.target = value();
    } else if (a == "--sim") {
      o.sim = value();
    } else if (a == "--sim-reset") {
      o.sim_reset = true;
    } else if (a == "--preset") {
      const std::string v = value();
      auto p = hiapi::load::parsePreset(v);
      if (!p) {
        error = "--preset: naive, guide or sdk, not '" + v + "'";
      } else {
        defaults.preset = *p;
      }
    } else if (a == "--clients") {
      defaults.clients = std::atoi(value().c_str());
      if (defaults.clients <= 0) {
        error = "--clients must be > 0";
      }
    } else if (a == "--tasks") {
      defaults.tasks = std::atoi(value().c_str());
    } else if (a == "--heavy-share") {
      defaults.heavy_share = std::atof(value().c_str());
    } else if (a == "--heavy-model") {
      o.heavy_model = value();
    } else if (a == "--light-model") {
      o.light_model = value();
    } else if (a == "--class-names") {
      std::stringstream ss(value());
      std::string n;
      while (std::getline(ss, n, ',')) {
        if (!n.empty()) {
          defaults.class_names.push_back(n);
        }
      }
    } else if (a == "--create-interval") {
      seconds(&defaults.create_interval_s);
    } else if (a == "--key") {
      defaults.key = value();
    } else if (a == "--group") {
      group_specs.push_back(value());
    } else if (a == "--seed") {
      o.seed = std::strtoull(value().c_str(), nullptr, 10);
    } else if (a == "--max-duration") {
      seconds(&o.max_duration_s);
    } else if (a == "--timeout") {
      seconds(&o.timeout_s);
    } else if (a == "--prompt-prefix") {
      o.prompt_prefix = value();
    } else if (a == "--label") {
      o.label = value();
    } else if (a == "--json") {
      o.json_path = value();
    } else if (a == "--fail-on-loss") {
      o.fail_on_loss = true;
    } else if (a == "--quiet") {
      o.quiet = true;
    } else if (a == "--hold") {
      o.hold = std::atoi(value().c_str());
      if (o.hold <= 0) {
        error = "--hold must be > 0";
      }
    } else if (a == "--hold-method") {
      o.hold_method = value();
    } else if (a == "--hold-path") {
      o.hold_path = value();
    } else if (a == "--hold-deadline") {
      o.hold_deadline = value();
    } else if (a == "--hold-rate") {
      o.hold_connect_rate = std::atof(value().c_str());
    } else {
      error = "unknown flag " + a;
    }
  }
  if (error.empty() && o.target.empty()) {
    error = "--target is required";
  }
  for (const std::string& spec : group_specs) {
    if (!error.empty()) {
      break;
    }
    Group g = defaults;
    g.class_names.clear();
    if (parseGroup(spec, &g, &error)) {
      o.groups.push_back(g);
    }
  }
  if (o.groups.empty()) {
    o.groups.push_back(defaults);
  }
  if (!error.empty()) {
    std::fprintf(stderr, "hiapi-load: %s (see --help)\n", error.c_str());
    return 2;
  }
  return o.hold > 0 ? hiapi::load::runHold(o) : hiapi::load::runTasks(o);
}
