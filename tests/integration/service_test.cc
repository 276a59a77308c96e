// Running as a service: the real daemon reports to a test NOTIFY_SOCKET (READY once it listens,
// RELOADING then READY on SIGHUP, a failure STATUS for an invalid file, STOPPING on SIGTERM, the
// watchdog), a SIGHUP reload under a steady load loses no request and keeps task state, the
// systemd unit passes `systemd-analyze verify` and `security`, and the Debian package that CPack
// builds holds what it should.

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <poll.h>
#include <rapidjson/document.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness/harness.h"

namespace hiapi::test {
namespace {

namespace fs = std::filesystem;

// ---- local helpers -----------------------------------------------------------------------------

struct CommandResult {
  int status = -1;  ///< exit status; -1 when it could not run
  std::string output;  ///< stdout and stderr together
};

/// Runs @p cmd through /bin/sh and captures its output.
CommandResult capture(const std::string& cmd) {
  CommandResult r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) {
    return r;
  }
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) {
    r.output.append(buf, n);
  }
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

bool haveCommand(const std::string& name) {
  return capture("command -v " + name).status == 0;
}

/// @p s quoted for /bin/sh.
std::string shq(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  }
  return out + "'";
}

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

/// The unix datagram socket systemd gives a Type=notify service, read by the test. Records the
/// sender's pid (SO_PASSCRED), so that a test can tell the main process from a helper.
class NotifySocket {
public:
  struct Message {
    std::string text;
    pid_t pid = 0;
    /// True when one of the message's lines is exactly @p line.
    bool has(const std::string& line) const {
      std::istringstream in(text);
      std::string l;
      while (std::getline(in, l)) {
        if (l == line) {
          return true;
        }
      }
      return false;
    }
    /// The value of NAME=... in the message, or nullopt.
    std::optional<std::string> field(const std::string& name) const {
      std::istringstream in(text);
      std::string line;
      while (std::getline(in, line)) {
        if (line.rfind(name + "=", 0) == 0) {
          return line.substr(name.size() + 1);
        }
      }
      return std::nullopt;
    }
  };

  explicit NotifySocket(const TempDir& dir) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) {
      throw std::runtime_error("socket(AF_UNIX) failed");
    }
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    socklen_t len = 0;
    const std::string path = dir.file("notify.sock");
    if (path.size() < sizeof(a.sun_path)) {
      std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
      len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
      name_ = path;
    } else {
      // TMPDIR too long for sun_path: an abstract socket ("@name"), which sd_notify accepts too.
      const std::string abstract = "hiapi-notify-" + std::to_string(::getpid()) + "-" +
                                   std::to_string(reinterpret_cast<uintptr_t>(this));
      std::memcpy(a.sun_path + 1, abstract.c_str(), abstract.size());
      len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + abstract.size());
      name_ = "@" + abstract;
    }
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), len) != 0) {
      throw std::runtime_error(std::string("bind notify socket: ") + std::strerror(errno));
    }
    const int on = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
  }
  ~NotifySocket() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  std::string env() const { return "NOTIFY_SOCKET=" + name_; }

  /// The next datagram, waiting up to @p timeout.
  std::optional<Message> next(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) {
      return std::nullopt;
    }
    char buf[4096];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
    iovec iov{buf, sizeof buf};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd_, &mh, MSG_DONTWAIT);
    if (n < 0) {
      return std::nullopt;
    }
    Message m;
    m.text.assign(buf, static_cast<size_t>(n));
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
        ucred cred{};
        std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
        m.pid = cred.pid;
      }
    }
    seen_.push_back(m);
    return m;
  }

  /// Reads datagrams in order until one holds @p line (e.g. "READY=1"); nullopt after
  /// @p timeout. Messages read on the way stay in seen().
  std::optional<Message> waitFor(const std::string& line, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        return std::nullopt;
      }
      std::optional<Message> m = next(left);
      if (m && m->has(line)) {
        return m;
      }
    }
  }

  std::string transcript() const {
    std::string out;
    for (const Message& m : seen_) {
      out += "[pid " + std::to_string(m.pid) + "] " + m.text + "\n---\n";
    }
    return out;
  }

private:
  int fd_ = -1;
  std::string name_;
  std::vector<Message> seen_;
};

/// The value of one series on /metrics, e.g. `hiapi_proxy_config_reloads_total{result="ok"}`.
std::optional<double> metricValue(uint16_t admin_port, const std::string& series) {
  const HttpResponse r = httpRequest(admin_port, "GET", "/metrics");
  if (r.status != 200) {
    return std::nullopt;
  }
  std::istringstream in(r.body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) {
      return std::strtod(line.c_str() + series.size() + 1, nullptr);
    }
  }
  return std::nullopt;
}

rapidjson::Document statusDoc(uint16_t admin_port) {
  rapidjson::Document d;
  const HttpResponse r = httpRequest(admin_port, "GET", "/status");
  d.Parse(r.body.c_str(), r.body.size());
  return d;
}

/// The first line `--check-config` prints for @p config, without the program name: the same
/// file:line message the daemon must give when a reload refuses the file.
std::string checkConfigError(const std::string& config) {
  const CommandResult r =
      capture(shq(HIAPI_PROXY_BIN) + " --check-config --config " + shq(config));
  std::string first = r.output.substr(0, r.output.find('\n'));
  const std::string prefix = "hiapi-proxy: ";
  if (first.rfind(prefix, 0) == 0) {
    first = first.substr(prefix.size());
  }
  return first;
}

/// Writes @p content to @p path through a rename, so a reader never sees half a file.
void replaceFile(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".new";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << content;
  }
  fs::rename(tmp, path);
}

std::string baseYaml(const std::string& upstream_url, const std::string& level = "warn") {
  return "listen:\n  address: 127.0.0.1\n  port: 0\n"
         "admin:\n  enabled: true\n  address: 127.0.0.1\n  port: 0\n"
         "upstream:\n  url: " + upstream_url + "\n  connect_timeout: 2s\n  response_timeout: 10s\n"
         "log:\n  level: " + level + "\n";
}

// Nothing listens on the discard port: the daemon starts anyway (it connects on demand).
const std::string kNoUpstream = "http://127.0.0.1:9";

// ---- sd_notify ---------------------------------------------------------------------------------

TEST(ServiceNotify, ReadyReloadingRefusedReloadStopping) {
  TempDir dir;
  NotifySocket notify(dir);
  ProxyProcess proxy(dir, baseYaml(kNoUpstream), {notify.env()});
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const pid_t pid = proxy.process().pid();

  // READY=1, sent by the daemon itself, and only once its listeners answer.
  std::optional<NotifySocket::Message> ready = notify.waitFor("READY=1", 10s);
  ASSERT_TRUE(ready) << notify.transcript() << proxy.process().err();
  EXPECT_EQ(ready->pid, pid) << "NotifyAccess=main: the main process must send it";
  EXPECT_TRUE(contains(ready->field("STATUS").value_or(""),
                       "listening on 127.0.0.1:" + std::to_string(proxy.port())))
      << ready->text;
  EXPECT_EQ(httpRequest(proxy.port(), "GET", "/not-v1").status, 404)
      << "the proxy listener answers by the time READY=1 arrives";
  EXPECT_EQ(httpRequest(proxy.adminPort(), "GET", "/readyz").status, 200);

  // A valid change: RELOADING=1, then READY=1 with the new summary.
  replaceFile(proxy.configPath(), baseYaml(kNoUpstream, "info"));
  proxy.process().signal(SIGHUP);
  std::optional<NotifySocket::Message> reloading = notify.waitFor("RELOADING=1", 10s);
  ASSERT_TRUE(reloading) << notify.transcript();
  EXPECT_EQ(reloading->pid, pid);
  std::optional<NotifySocket::Message> reready = notify.waitFor("READY=1", 10s);
  ASSERT_TRUE(reready) << notify.transcript();
  EXPECT_TRUE(contains(reready->field("STATUS").value_or(""), "reloaded")) << reready->text;
  EXPECT_EQ(metricValue(proxy.adminPort(), "hiapi_proxy_config_reloads_total{result=\"ok\"}"),
            1.0);

  // An invalid file: refused with the same file:line message as --check-config, the daemon
  // goes back to READY with a failure STATUS and keeps serving with the old configuration.
  replaceFile(proxy.configPath(), baseYaml(kNoUpstream) + "limits:\n  rate: fast\n");
  const std::string expected = checkConfigError(proxy.configPath());
  ASSERT_TRUE(contains(expected, proxy.configPath() + ":")) << expected;
  proxy.process().signal(SIGHUP);
  ASSERT_TRUE(notify.waitFor("RELOADING=1", 10s)) << notify.transcript();
  std::optional<NotifySocket::Message> after_bad = notify.waitFor("READY=1", 10s);
  ASSERT_TRUE(after_bad) << notify.transcript();
  const std::string status = after_bad->field("STATUS").value_or("");
  EXPECT_TRUE(contains(status, "reload failed")) << status;
  EXPECT_TRUE(contains(status, expected)) << "STATUS: " << status << "\nexpected: " << expected;
  EXPECT_TRUE(waitFor([&] { return contains(proxy.process().err(), expected); }, 5s))
      << proxy.process().err();
  EXPECT_TRUE(proxy.process().running());
  EXPECT_EQ(
      metricValue(proxy.adminPort(), "hiapi_proxy_config_reloads_total{result=\"failed\"}"),
      1.0);
  EXPECT_EQ(metricValue(proxy.adminPort(), "hiapi_proxy_config_reloads_total{result=\"ok\"}"),
            1.0);
  EXPECT_EQ(httpRequest(proxy.port(), "GET", "/not-v1").status, 404);
  EXPECT_EQ(httpRequest(proxy.adminPort(), "GET", "/readyz").status, 200);

  // SIGTERM: STOPPING=1, then a clean exit.
  proxy.process().signal(SIGTERM);
  std::optional<NotifySocket::Message> stopping = notify.waitFor("STOPPING=1", 10s);
  ASSERT_TRUE(stopping) << notify.transcript();
  EXPECT_EQ(stopping->pid, pid);
  EXPECT_EQ(proxy.process().wait(15s), 0) << proxy.process().err();
}

TEST(ServiceNotify, WatchdogKeepAliveWithoutWatchdogPid) {
  // WATCHDOG_PID unset: sd_watchdog_enabled(3) accepts any process.
  TempDir dir;
  NotifySocket notify(dir);
  ProxyProcess proxy(dir, baseYaml(kNoUpstream), {notify.env(), "WATCHDOG_USEC=200000"});
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  ASSERT_TRUE(notify.waitFor("READY=1", 10s)) << notify.transcript();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 3; ++i) {
    std::optional<NotifySocket::Message> m = notify.waitFor("WATCHDOG=1", 2s);
    ASSERT_TRUE(m) << "keep-alive " << i << "\n" << notify.transcript();
    EXPECT_EQ(m->pid, proxy.process().pid());
  }
  // Every WatchdogSec/2 = 100 ms: three of them well inside one 200 ms timeout each.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1500ms);
}

/// Starts the daemon through `sh -c 'WATCHDOG_PID=... exec hiapi-proxy ...'`, as systemd would
/// hand it the pid it expects; the port file tells when it listens.
struct WrappedProxy {
  WrappedProxy(const TempDir& dir, const std::string& watchdog_pid_expr,
               const std::vector<std::string>& env)
      : config(dir.file("wrapped.yaml")), port_file(dir.file("wrapped.ports")) {
    dir.write("wrapped.yaml", baseYaml(kNoUpstream));
    const std::string script = "WATCHDOG_PID=" + watchdog_pid_expr + " exec " +
                               shq(HIAPI_PROXY_BIN) + " --config " + shq(config) +
                               " --port-file " + shq(port_file);
    proc = std::make_unique<Process>(std::vector<std::string>{"/bin/sh", "-c", script},
                                     dir.file("wrapped"), env);
  }
  ~WrappedProxy() {
    if (proc->running()) {
      proc->signal(SIGTERM);
      if (!proc->wait(10s)) {
        proc->signal(SIGKILL);
        proc->wait(5s);
      }
    }
  }
  std::string config, port_file;
  std::unique_ptr<Process> proc;
};

TEST(ServiceNotify, WatchdogOnlyWhenWatchdogPidIsTheDaemon) {
  {
    TempDir dir;
    NotifySocket notify(dir);
    // $$ is the shell's pid, which `exec` hands over to the daemon.
    WrappedProxy p(dir, "$$", {notify.env(), "WATCHDOG_USEC=200000"});
    std::optional<NotifySocket::Message> ready = notify.waitFor("READY=1", 15s);
    ASSERT_TRUE(ready) << notify.transcript() << p.proc->err();
    EXPECT_EQ(ready->pid, p.proc->pid());
    std::optional<NotifySocket::Message> wd = notify.waitFor("WATCHDOG=1", 2s);
    ASSERT_TRUE(wd) << notify.transcript();
    EXPECT_EQ(wd->pid, p.proc->pid());
    p.proc->signal(SIGTERM);
    ASSERT_TRUE(notify.waitFor("STOPPING=1", 10s)) << notify.transcript();
    EXPECT_EQ(p.proc->wait(15s), 0) << p.proc->err();
  }
  {
    // Another process's pid (1): the watchdog is meant for someone else, the daemon stays quiet.
    TempDir dir;
    NotifySocket notify(dir);
    WrappedProxy p(dir, "1", {notify.env(), "WATCHDOG_USEC=200000"});
    ASSERT_TRUE(notify.waitFor("READY=1", 15s)) << notify.transcript() << p.proc->err();
    // Five keep-alive periods of silence: there is no event to poll for when nothing comes.
    EXPECT_FALSE(notify.waitFor("WATCHDOG=1", 500ms)) << notify.transcript();
    EXPECT_TRUE(p.proc->running());
  }
}

// ---- reload under load -------------------------------------------------------------------------

const std::string kServiceKey = "sk-service-test-key-0123456789abcdef";

struct Variant {
  std::string rate;
  double rate_per_s;
  int heavy_max, light_max;
  std::string level;
};
// Rates below what the clients ask for, so that requests queue in the proxy at every reload.
const Variant kVariants[] = {{"40/s", 40, 4, 40, "warn"},
                             {"30/s", 30, 5, 30, "info"},
                             {"50/s", 50, 6, 35, "warn"}};

std::string loadYaml(uint16_t sim_port, const Variant& v) {
  return baseYaml("http://127.0.0.1:" + std::to_string(sim_port), v.level) +
         "keys:\n  - name: svc\n    key: " + kServiceKey + "\n"
         "limits:\n  rate: " + v.rate + "\n  burst: 5\n"
         "  tiers:\n"
         "    - {name: heavy, models: [\"seedance-*\"], max_running: " +
         std::to_string(v.heavy_max) + ", lease: 10m, min_poll_interval: 1s}\n"
         "    - {name: light, models: [\"*\"], max_running: " + std::to_string(v.light_max) +
         ", lease: 10m, min_poll_interval: 50ms}\n"
         "queue:\n  deadline: 30s\n"
         // Every poll goes through admission (none held for its task's end): the reload test
         // wants requests waiting in the queue.
         "tasks:\n  hold_near_end: 0s\n";
}

std::string taskIdOf(const std::string& create_body) {
  static const std::regex re("\"taskId\"\\s*:\\s*\"([^\"]+)\"");
  std::smatch m;
  return std::regex_search(create_body, m, re) ? m[1].str() : std::string();
}

const std::vector<std::pair<std::string, std::string>> kHeaders{
    {"Authorization", "Bearer " + kServiceKey}, {"Content-Type", "application/json"}};

/// What the client threads saw, shared with the test thread.
struct LoadTotals {
  std::atomic<int> answered{0};  ///< 2xx answers
  std::atomic<int> failed{0};    ///< anything else, including no answer
  std::mutex mu;
  std::string first_failure;
  void fail(const std::string& what, const HttpResponse& r) {
    ++failed;
    std::lock_guard<std::mutex> lock(mu);
    if (first_failure.empty()) {
      first_failure = what + ": status " + std::to_string(r.status) + " " + r.body.substr(0, 300);
    }
  }
};

/// One service: create a light task, poll it to its end, again, until @p stop.
void clientLoop(uint16_t port, int id, const std::atomic<bool>& stop, LoadTotals& totals) {
  for (int n = 0; !stop; ++n) {
    const std::string body = "{\"model\":\"gpt-image-1\",\"input\":{\"prompt\":\"client " +
                             std::to_string(id) + " task " + std::to_string(n) + "\"}}";
    const HttpResponse c = httpRequest(port, "POST", "/v1/tasks", kHeaders, body, 40s);
    if (c.status < 200 || c.status > 299) {
      totals.fail("create", c);
      continue;
    }
    ++totals.answered;
    const std::string task = taskIdOf(c.body);
    if (task.empty()) {
      totals.fail("create without taskId", c);
      continue;
    }
    for (int polls = 0; polls < 200; ++polls) {
      const HttpResponse p = httpRequest(port, "GET", "/v1/tasks/" + task, kHeaders, {}, 40s);
      if (p.status < 200 || p.status > 299) {
        totals.fail("poll", p);
        break;
      }
      ++totals.answered;
      if (contains(p.body, "\"status\":\"success\"") || contains(p.body, "\"status\":\"fail\"")) {
        break;
      }
      std::this_thread::sleep_for(40ms);  // the client's poll pace, not a wait for the test
    }
  }
}

/// Task ids in /status tasks.running, by tier.
std::multiset<std::string> runningTasks(const rapidjson::Document& st, const std::string& tier) {
  std::multiset<std::string> out;
  if (!st.IsObject() || !st.HasMember("tasks") || !st["tasks"].HasMember("running")) {
    return out;
  }
  for (const auto& t : st["tasks"]["running"].GetArray()) {
    if (t["tier"].GetString() == tier) {
      out.insert(t["task_id"].GetString());
    }
  }
  return out;
}

const rapidjson::Value* keyStatus(const rapidjson::Document& st, const std::string& name) {
  if (!st.IsObject() || !st.HasMember("keys")) {
    return nullptr;
  }
  for (const auto& k : st["keys"].GetArray()) {
    if (k["name"].GetString() == name) {
      return &k;
    }
  }
  return nullptr;
}

uint64_t queueDepth(uint16_t admin_port, const std::string& key) {
  const rapidjson::Document st = statusDoc(admin_port);
  const rapidjson::Value* k = keyStatus(st, key);
  return k != nullptr && k->HasMember("queue_depth") ? (*k)["queue_depth"].GetUint64() : 0;
}

int tierRunning(const rapidjson::Value& key, const std::string& tier) {
  for (const auto& t : key["tiers"].GetArray()) {
    if (t["name"].GetString() == tier) {
      return t["running"].GetInt();
    }
  }
  return -1;
}

TEST(ServiceReload, UnderSteadyLoadLosesNoRequestAndKeepsTaskState) {
  TempDir dir;
  // Generous upstream: no rate or tier limit; light tasks end fast, heavy ones outlive the test;
  // 20 ms per request, so that some are always in flight upstream.
  SimProcess sim(dir, {"--rate", "0", "--heavy-max", "0", "--light-max", "0", "--light-duration",
                       "200ms", "--heavy-duration", "10m", "--duration-jitter", "0", "--latency",
                       "20ms", "--seed", "11"});
  ASSERT_TRUE(sim.started()) << sim.process().err();
  NotifySocket notify(dir);
  ProxyProcess proxy(dir, loadYaml(sim.port(), kVariants[0]), {notify.env()});
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  ASSERT_TRUE(notify.waitFor("READY=1", 10s)) << notify.transcript();

  // Three heavy tasks that run through every reload: they hold heavy slots the whole time.
  std::multiset<std::string> heavy;
  for (int i = 0; i < 3; ++i) {
    const HttpResponse c = httpRequest(
        proxy.port(), "POST", "/v1/tasks", kHeaders,
        "{\"model\":\"seedance-2.0\",\"input\":{\"prompt\":\"long " + std::to_string(i) + "\"}}");
    ASSERT_EQ(c.status, 200) << c.body;
    heavy.insert(taskIdOf(c.body));
  }
  {
    const rapidjson::Document st = statusDoc(proxy.adminPort());
    ASSERT_EQ(runningTasks(st, "heavy"), heavy);
    const rapidjson::Value* k = keyStatus(st, "svc");
    ASSERT_NE(k, nullptr);
    EXPECT_EQ(tierRunning(*k, "heavy"), 3);
  }

  LoadTotals totals;
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int i = 0; i < 6; ++i) {
    clients.emplace_back(clientLoop, proxy.port(), i, std::cref(stop), std::ref(totals));
  }
  auto progress = [&](int more) {
    const int target = totals.answered + more;
    return waitFor([&] { return totals.answered >= target || totals.failed > 0; }, 15s);
  };
  ASSERT_TRUE(progress(20)) << "the load does not get going";

  // Five valid reloads (rate, tier ceilings and log level change each time) and an invalid one
  // (-1), each while requests are in flight; READY=1 after each before the next.
  const std::vector<int> steps{1, 2, -1, 0, 1, 2};
  const int kValid = 5;
  size_t reloads_with_queue = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const bool bad = steps[i] < 0;
    const std::string yaml = bad ? loadYaml(sim.port(), kVariants[0]) + "bogus_key: 1\n"
                                 : loadYaml(sim.port(), kVariants[steps[i]]);
    replaceFile(proxy.configPath(), yaml);
    // Reload while requests wait in the admission queue (and others are upstream).
    if (waitFor([&] { return queueDepth(proxy.adminPort(), "svc") > 0; }, 5s)) {
      ++reloads_with_queue;
    }
    proxy.process().signal(SIGHUP);
    ASSERT_TRUE(notify.waitFor("RELOADING=1", 10s)) << notify.transcript();
    std::optional<NotifySocket::Message> r = notify.waitFor("READY=1", 10s);
    ASSERT_TRUE(r) << notify.transcript();
    EXPECT_TRUE(contains(r->field("STATUS").value_or(""), bad ? "reload failed" : "reloaded"))
        << r->text;
    ASSERT_TRUE(progress(30)) << "requests stopped flowing after reload " << i;
  }
  stop = true;
  for (std::thread& t : clients) {
    t.join();
  }
  std::printf("reload under load: %d answers, %d failures, %zu of %zu reloads with a queue\n",
              totals.answered.load(), totals.failed.load(), reloads_with_queue, steps.size());
  EXPECT_EQ(totals.failed, 0) << totals.first_failure;
  EXPECT_EQ(reloads_with_queue, steps.size()) << "reloads that found requests queued";
  EXPECT_GT(totals.answered, 100);
  EXPECT_TRUE(proxy.process().running());

  EXPECT_EQ(metricValue(proxy.adminPort(), "hiapi_proxy_config_reloads_total{result=\"ok\"}"),
            kValid);
  EXPECT_EQ(
      metricValue(proxy.adminPort(), "hiapi_proxy_config_reloads_total{result=\"failed\"}"), 1);

  // Same tracked tasks, same slots, the last valid configuration in force.
  const Variant& last = kVariants[steps.back()];
  const rapidjson::Document st = statusDoc(proxy.adminPort());
  EXPECT_EQ(runningTasks(st, "heavy"), heavy);
  const rapidjson::Value* k = keyStatus(st, "svc");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(tierRunning(*k, "heavy"), 3);
  EXPECT_DOUBLE_EQ((*k)["configured_rate_per_s"].GetDouble(), last.rate_per_s);
  for (const auto& t : (*k)["tiers"].GetArray()) {
    if (t["name"].GetString() == std::string("heavy")) {
      EXPECT_EQ(t["ceiling"].GetInt(), last.heavy_max);
    }
  }
}

// ---- the unit ----------------------------------------------------------------------------------

const std::string kUnit = std::string(HIAPI_SOURCE_DIR) + "/systemd/hiapi-proxy.service";
const std::string kCredentialDropIn = std::string(HIAPI_SOURCE_DIR) + "/systemd/credential.conf";

/// The unit as shipped plus, optionally, the credential drop-in (a drop-in's [Service] lines
/// merge like lines appended to the unit).
std::string unitText(bool with_credential) {
  std::string text = readFile(kUnit);
  if (with_credential) {
    text += "\n" + readFile(kCredentialDropIn);
  }
  return text;
}

std::string replaceAll(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
  return s;
}

TEST(ServiceUnit, HasTheServiceSettings) {
  const std::string u = readFile(kUnit);
  ASSERT_FALSE(u.empty()) << kUnit;
  for (const char* line :
       {"Type=notify", "NotifyAccess=main",
        "ExecStart=/usr/bin/hiapi-proxy --config /etc/hiapi-proxy/hiapi-proxy.yaml",
        "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "WatchdogSec=",
        "EnvironmentFile=-/etc/hiapi-proxy/env", "StateDirectory=hiapi-proxy", "DynamicUser=yes",
        "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
        "NoNewPrivileges=yes", "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes", "LockPersonality=yes"}) {
    EXPECT_TRUE(contains(u, std::string("\n") + line)) << "missing: " << line;
  }
  EXPECT_TRUE(contains(readFile(kCredentialDropIn),
                       "\nLoadCredential=hiapi-key:/etc/hiapi-proxy/hiapi-key"));
}

TEST(ServiceUnit, SystemdAnalyzeVerifyIsClean) {
  if (!haveCommand("systemd-analyze")) {
    GTEST_SKIP() << "systemd-analyze is not installed";
  }
  // verify insists that ExecStart's binary exists: check a copy that names the built one (the
  // file name stays hiapi-proxy.service, which the unit's settings depend on).
  for (bool cred : {false, true}) {
    TempDir dir;
    dir.write("hiapi-proxy.service",
              replaceAll(unitText(cred), "/usr/bin/hiapi-proxy", HIAPI_PROXY_BIN));
    const CommandResult r = capture("systemd-analyze verify --man=no " +
                                    shq(dir.file("hiapi-proxy.service")));
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(r.output, "") << (cred ? "with the credential drop-in" : "as shipped");
  }
}

TEST(ServiceUnit, SystemdAnalyzeSecurityRatesItOk) {
  if (!haveCommand("systemd-analyze")) {
    GTEST_SKIP() << "systemd-analyze is not installed";
  }
  for (bool cred : {false, true}) {
    TempDir dir;
    dir.write("hiapi-proxy.service", unitText(cred));
    const CommandResult r = capture("systemd-analyze security --offline=yes " +
                                    shq(dir.file("hiapi-proxy.service")));
    static const std::regex re(
        "Overall exposure level for hiapi-proxy\\.service: ([0-9.]+) (\\w+)");
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r.output, m, re)) << r.output;
    const double exposure = std::stod(m[1].str());
    std::printf("systemd-analyze security%s: %.1f %s\n", cred ? " (with credential)" : "",
                exposure, m[2].str().c_str());
    EXPECT_LE(exposure, 2.0) << r.output;
    EXPECT_EQ(m[2].str(), "OK") << r.output;
  }
}

// ---- the Debian package ------------------------------------------------------------------------

TEST(ServicePackage, DebHoldsBinaryUnitConffileAndDependencies) {
  if (!haveCommand("dpkg-deb")) {
    GTEST_SKIP() << "dpkg-deb is not installed (not a Debian system)";
  }
  const std::string build = fs::path(HIAPI_PROXY_BIN).parent_path().string();
  const std::string cpack_config = build + "/CPackConfig.cmake";
  ASSERT_TRUE(fs::exists(cpack_config))
      << cpack_config << " is missing: is cmake/packaging.cmake included?";
  TempDir dir;
  const CommandResult pack = capture("cpack -G DEB -B " + shq(dir.file("out")) + " --config " +
                                     shq(cpack_config));
  ASSERT_EQ(pack.status, 0) << pack.output;
  std::string deb;
  for (const auto& e : fs::directory_iterator(dir.file("out"))) {
    if (e.path().extension() == ".deb") {
      deb = e.path().string();
    }
  }
  ASSERT_FALSE(deb.empty()) << pack.output;
  EXPECT_TRUE(std::regex_search(fs::path(deb).filename().string(),
                                std::regex("^hiapi-proxy_[0-9.]+_[a-z0-9]+\\.deb$")))
      << deb;

  const CommandResult contents = capture("dpkg-deb -c " + shq(deb));
  ASSERT_EQ(contents.status, 0) << contents.output;
  for (const char* path : {"./usr/bin/hiapi-proxy", "./lib/systemd/system/hiapi-proxy.service",
                           "./etc/hiapi-proxy/hiapi-proxy.yaml",
                           "./usr/share/doc/hiapi-proxy/README.md",
                           "./usr/share/doc/hiapi-proxy/copyright",
                           "./usr/share/doc/hiapi-proxy/changelog.gz",
                           "./usr/share/doc/hiapi-proxy/examples/grafana/alerts.yml",
                           "./usr/share/doc/hiapi-proxy/examples/credential.conf"}) {
    EXPECT_TRUE(contains(contents.output, std::string(path) + "\n")) << path << "\n"
                                                                     << contents.output;
  }
  EXPECT_FALSE(contains(contents.output, "hiapi-sim")) << "tools stay out of the package";

  const CommandResult info = capture("dpkg-deb -I " + shq(deb));
  ASSERT_EQ(info.status, 0) << info.output;
  EXPECT_TRUE(contains(info.output, " conffiles")) << info.output;
  for (const char* script : {" postinst", " prerm", " postrm"}) {
    EXPECT_TRUE(contains(info.output, script)) << info.output;
  }
  const CommandResult depends = capture("dpkg-deb -f " + shq(deb) + " Depends");
  for (const char* dep : {"libc6", "libstdc++6", "libevent-core-2.1-7", "libevent-extra-2.1-7",
                          "libssl3", "libyaml-cpp0.7", "libprometheus-cpp-core1.0", "libsystemd0",
                          "ca-certificates"}) {
    EXPECT_TRUE(contains(depends.output, dep)) << dep << " missing from: " << depends.output;
  }
  // llhttp is compiled in: nothing of http-parser's at run time.
  EXPECT_FALSE(contains(depends.output, "http-parser")) << depends.output;
  // Who answers for it: a maintainer with a real address, and no homepage that is HiAPI's.
  const CommandResult maintainer = capture("dpkg-deb -f " + shq(deb) + " Maintainer");
  EXPECT_TRUE(std::regex_search(maintainer.output, std::regex("^[^<@]+ <[^<>@\\s]+@[^<>@\\s]+>")))
      << maintainer.output;
  EXPECT_FALSE(contains(maintainer.output, "@localhost")) << maintainer.output;
  EXPECT_FALSE(contains(capture("dpkg-deb -f " + shq(deb) + " Homepage").output, "hiapi.ai"));

  // Unpack and look inside.
  ASSERT_EQ(capture("dpkg-deb -x " + shq(deb) + " " + shq(dir.file("root"))).status, 0);
  ASSERT_EQ(capture("dpkg-deb -e " + shq(deb) + " " + shq(dir.file("control"))).status, 0);
  EXPECT_EQ(readFile(dir.file("control/conffiles")), "/etc/hiapi-proxy/hiapi-proxy.yaml\n");
  for (const char* script : {"postinst", "prerm", "postrm"}) {
    const CommandResult syntax = capture("sh -n " + shq(dir.file("control/") + script));
    EXPECT_EQ(syntax.status, 0) << script << ": " << syntax.output;
    EXPECT_EQ(fs::status(dir.file("control/") + script).permissions() & fs::perms::owner_exec,
              fs::perms::owner_exec)
        << script;
  }
  EXPECT_EQ(readFile(dir.file("root/lib/systemd/system/hiapi-proxy.service")), readFile(kUnit));
  const std::string etc_conf = dir.file("root/etc/hiapi-proxy/hiapi-proxy.yaml");
  EXPECT_TRUE(contains(readFile(etc_conf), "\n  state_file: /var/lib/hiapi-proxy/tasks.json\n"))
      << "the packaged configuration saves tasks in the unit's StateDirectory";
  const CommandResult check = capture(shq(HIAPI_PROXY_BIN) + " --check-config --config " +
                                      shq(etc_conf));
  EXPECT_EQ(check.status, 0) << check.output;
  const CommandResult version =
      capture(shq(dir.file("root/usr/bin/hiapi-proxy")) + " --version");
  EXPECT_EQ(version.status, 0) << version.output;
  EXPECT_TRUE(contains(version.output, "hiapi-proxy ")) << version.output;

  // The license, stated the way Debian reads it, and a changelog whose top entry is this version.
  const std::string copyright = readFile(dir.file("root/usr/share/doc/hiapi-proxy/copyright"));
  EXPECT_TRUE(contains(copyright, "\nLicense: Apache-2.0\n")) << copyright;
  EXPECT_TRUE(contains(copyright, "/usr/share/common-licenses/Apache-2.0")) << copyright;
  EXPECT_TRUE(contains(readFile(std::string(HIAPI_SOURCE_DIR) + "/LICENSE"),
                       "Apache License\n                           Version 2.0"));
  const CommandResult changelog =
      capture("zcat " + shq(dir.file("root/usr/share/doc/hiapi-proxy/changelog.gz")));
  const std::string pkg_version = capture("dpkg-deb -f " + shq(deb) + " Version").output;
  EXPECT_TRUE(contains(changelog.output,
                       "hiapi-proxy (" + pkg_version.substr(0, pkg_version.find('\n')) + ") "))
      << changelog.output << pkg_version;

  // lintian: no error (warnings and notes are printed for the record).
  if (!haveCommand("lintian")) {
    GTEST_SKIP() << "lintian is not installed (tools/setup.sh installs it)";
  }
  const CommandResult lint = capture("lintian --tag-display-limit 0 " + shq(deb));
  std::printf("lintian:\n%s", lint.output.c_str());
  EXPECT_FALSE(std::regex_search(lint.output, std::regex("(^|\n)E: "))) << lint.output;
}

// ---- the container files (no container engine runs here: what can be checked without one) ----

const std::string kContainerDir = std::string(HIAPI_SOURCE_DIR) + "/tools/container";
const std::string kDockerfile = kContainerDir + "/Dockerfile";

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) {
    out.push_back(l);
  }
  return out;
}

/// Packages the Dockerfile's run-time stage installs (between the runtime-packages markers).
std::set<std::string> runtimePackages() {
  std::set<std::string> out;
  bool inside = false;
  static const std::regex pkg("^\\s+([a-z0-9][a-z0-9.+-]+)\\s*\\\\$");
  for (const std::string& l : lines(readFile(kDockerfile))) {
    if (contains(l, "runtime-packages-begin")) {
      inside = true;
    } else if (contains(l, "runtime-packages-end")) {
      inside = false;
    }
    std::smatch m;
    if (inside && std::regex_search(l, m, pkg)) {
      out.insert(m[1].str());
    }
  }
  return out;
}

/// The Debian packages that hold the shared libraries @p binary names directly (NEEDED).
std::set<std::string> neededPackages(const std::string& binary, std::string& log) {
  std::set<std::string> out;
  const CommandResult needed = capture("readelf -d " + shq(binary));
  const CommandResult ldd = capture("ldd " + shq(binary));
  log += needed.output + ldd.output;
  static const std::regex needed_re("\\(NEEDED\\)\\s+Shared library: \\[([^\\]]+)\\]");
  for (auto it = std::sregex_iterator(needed.output.begin(), needed.output.end(), needed_re);
       it != std::sregex_iterator(); ++it) {
    const std::string soname = (*it)[1].str();
    if (std::regex_search(soname, std::regex("^lib(asan|ubsan|lsan|tsan)\\.so"))) {
      continue;  // a sanitizer build's runtime (HIAPI_SANITIZE=1), not the image's
    }
    const std::regex path_re("\\s" + std::regex_replace(soname, std::regex("[.+]"), "\\$&") +
                             " => (\\S+)");
    std::smatch m;
    if (!std::regex_search(ldd.output, m, path_re)) {
      out.insert("<unresolved " + soname + ">");
      continue;
    }
    // Debian 12 is merged-/usr, but dpkg knows each file by the path its package ships: try
    // the name ldd printed and the real file, each with and without /usr.
    const std::string given = m[1].str();
    const std::string real = fs::canonical(given).string();
    std::vector<std::string> candidates;
    for (const std::string& c : {given, real}) {
      candidates.push_back(c);
      candidates.push_back(c.rfind("/usr/", 0) == 0 ? c.substr(4) : "/usr" + c);
    }
    CommandResult owner;
    std::string path;
    for (const std::string& c : candidates) {
      owner = capture("dpkg -S " + shq(c));
      path = c;
      if (owner.status == 0) {
        break;
      }
    }
    log += owner.output;
    out.insert(owner.status == 0 ? owner.output.substr(0, owner.output.find_first_of(":,"))
                                 : "<no package for " + path + ">");
  }
  return out;
}

TEST(ServiceContainer, RuntimeStageInstallsEveryLibraryTheBinariesNeed) {
#if defined(__SANITIZE_ADDRESS__)
  // The image ships a release build; a sanitizer build links what the sanitizers keep alive
  // (the whole of libevent), which says nothing about the image.
  GTEST_SKIP() << "the runtime stage is checked against the release build's binaries";
#endif
  if (!haveCommand("dpkg") || !haveCommand("readelf")) {
    GTEST_SKIP() << "needs dpkg and readelf (binutils)";
  }
  const std::set<std::string> installed = runtimePackages();
  ASSERT_FALSE(installed.empty()) << "no runtime-packages block in " << kDockerfile;
  // In every Debian image: the C library and libgcc.
  const std::set<std::string> base{"libc6", "libgcc-s1"};
  std::set<std::string> used{"ca-certificates"};
  std::string log;
  for (const std::string& bin : {std::string(HIAPI_PROXY_BIN), std::string(HIAPI_SIM_BIN)}) {
    const std::set<std::string> needed = neededPackages(bin, log);
    EXPECT_FALSE(needed.empty()) << log;
    for (const std::string& p : needed) {
      EXPECT_TRUE(installed.count(p) || base.count(p))
          << bin << " needs " << p << ", which the run-time stage does not install\n" << log;
      used.insert(p);
    }
  }
  EXPECT_TRUE(installed.count("ca-certificates")) << "the upstream's certificate is verified";
  // And nothing more: a library no binary names is image size and attack surface for nothing.
  for (const std::string& p : installed) {
    EXPECT_TRUE(used.count(p)) << "the run-time stage installs " << p << ", which no binary "
                               << "needs\n" << log;
  }
}

TEST(ServiceContainer, BuildStageRunsTheQuickStartSteps) {
  // README's quick start is tools/run.sh: setup.sh, then build.sh into build/.
  const std::string run = readFile(std::string(HIAPI_SOURCE_DIR) + "/tools/run.sh");
  ASSERT_TRUE(contains(run, "/tools/setup.sh\" run\n")) << run;
  ASSERT_TRUE(contains(run, "/tools/build.sh\" \"$root/build\" -DHIAPI_BUILD_TESTS=OFF")) << run;
  // Running never stops a service: only setup.sh's full (test) set installs nginx and Prometheus.
  EXPECT_FALSE(contains(run, "systemctl")) << run;
  const std::string df = readFile(kDockerfile);
  EXPECT_TRUE(contains(df, "\nFROM debian:12 AS build\n")) << df;
  // The package layer comes before the sources are copied: a source change keeps it cached.
  EXPECT_TRUE(contains(df, "\nCOPY tools/setup.sh tools/setup.sh\nRUN ./tools/setup.sh run\n"
                           "COPY . .\nRUN ./tools/build.sh /src/build -DHIAPI_BUILD_TESTS=OFF\n"))
      << df;
  EXPECT_TRUE(contains(df, "\nFROM debian:12-slim AS runtime\n")) << df;
  EXPECT_TRUE(contains(df, "\nUSER 10001:10001\n")) << "runs as a non-root user";
  EXPECT_TRUE(contains(df, "\nHEALTHCHECK ")) << df;
  EXPECT_TRUE(contains(df, "COPY tools/container/hiapi-proxy.sidecar.yaml "
                           "/etc/hiapi-proxy/hiapi-proxy.yaml\n"));
  // The last stage is the default target: the proxy, not the build tools or the simulator.
  const std::string last_stage = "\nFROM runtime AS hiapi-proxy\n";
  const size_t last_from = df.rfind("\nFROM ");
  ASSERT_NE(last_from, std::string::npos);
  EXPECT_EQ(df.substr(last_from, last_stage.size()), last_stage);
}

const std::string kHealthcheck = kContainerDir + "/healthcheck.sh";

TEST(ServiceContainer, HealthcheckAsksTheAdminPortOfTheConfiguration) {
  if (!haveCommand("bash") || !haveCommand("awk")) {
    GTEST_SKIP() << "bash or awk is missing";
  }
  const std::string df = readFile(kDockerfile);
  ASSERT_TRUE(contains(df, "\nCOPY tools/container/healthcheck.sh /usr/bin/hiapi-proxy-healthcheck\n"))
      << df;
  ASSERT_TRUE(contains(df, "CMD [\"/usr/bin/hiapi-proxy-healthcheck\"]")) << df;
  ASSERT_TRUE(contains(readFile(kHealthcheck), "GET /healthz ")) << kHealthcheck;
  TempDir dir;
  ProxyProcess proxy(dir, baseYaml(kNoUpstream));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const std::string admin = std::to_string(proxy.adminPort());
  auto check = [&](const std::string& env) {
    return capture("env " + env + " bash " + shq(kHealthcheck)).status;
  };
  // The admin port read from a configuration's admin block (a top-level port elsewhere and the
  // proxy listener's port are not it).
  dir.write("image.yaml", "listen:\n  address: 127.0.0.1\n  port: " + std::to_string(proxy.port()) +
                              "\nadmin:\n  enabled: true\n  # the admin listener\n  port: " + admin +
                              "\nupstream:\n  url: http://127.0.0.1:1\n");
  EXPECT_EQ(check("HIAPI_CONFIG=" + shq(dir.file("image.yaml"))), 0);
  // The environment variable wins over the configuration.
  EXPECT_EQ(check("HIAPI_CONFIG=/nonexistent HIAPI_ADMIN_PORT=" + admin), 0);
  // The proxy listener answers /healthz with 404: unhealthy.
  EXPECT_NE(check("HIAPI_ADMIN_PORT=" + std::to_string(proxy.port())), 0);
  proxy.process().signal(SIGTERM);
  ASSERT_EQ(proxy.process().wait(15s), 0);
  EXPECT_NE(check("HIAPI_ADMIN_PORT=" + admin), 0) << "a stopped daemon is not healthy";
}

TEST(ServiceContainer, SidecarConfigsListenOnThePodNetworkOnPurposeAndAreValid) {
  TempDir dir;
  dir.write("key", "sk-container-test-key\n");
  for (const std::string name : {"hiapi-proxy.sidecar.yaml", "compose/hiapi-proxy.yaml"}) {
    const std::string text = readFile(kContainerDir + "/" + name);
    ASSERT_FALSE(text.empty()) << name;
    EXPECT_TRUE(contains(text, "\nlisten:\n")) << name;
    EXPECT_TRUE(contains(text, "\n  address: 0.0.0.0\n")) << name;
    EXPECT_TRUE(contains(text, "\n  allow_non_loopback: true\n")) << name;
    EXPECT_TRUE(contains(text, "\n    key_file: /run/secrets/hiapi-key\n")) << name;
    // Valid, once the mounted key exists.
    dir.write("check.yaml", replaceAll(text, "/run/secrets/hiapi-key", dir.file("key")));
    const CommandResult check = capture(shq(HIAPI_PROXY_BIN) + " --check-config --config " +
                                        shq(dir.file("check.yaml")));
    EXPECT_EQ(check.status, 0) << name << ": " << check.output;
    EXPECT_TRUE(contains(check.output, "listen 0.0.0.0:8787")) << check.output;
  }
}

TEST(ServiceContainer, ComposeMountsFilesThatExist) {
  const std::string compose = readFile(kContainerDir + "/compose.yaml");
  ASSERT_FALSE(compose.empty());
  static const std::regex mount_re("- (\\.\\.?/[^:\\s]+):/");
  int mounts = 0;
  for (auto it = std::sregex_iterator(compose.begin(), compose.end(), mount_re);
       it != std::sregex_iterator(); ++it) {
    ++mounts;
    const std::string p = kContainerDir + "/" + (*it)[1].str();
    EXPECT_TRUE(fs::exists(p)) << p;
  }
  EXPECT_GE(mounts, 5) << compose;
  EXPECT_TRUE(fs::exists(kContainerDir + "/compose/demo-key"));
  for (const char* piece : {"dockerfile: tools/container/Dockerfile", "target: hiapi-sim",
                            "network_mode: \"service:hiapi-proxy\"", "prom/prometheus:",
                            "grafana/grafana-oss:", "../grafana/hiapi-proxy.json:"}) {
    EXPECT_TRUE(contains(compose, piece)) << piece;
  }
  if (haveCommand("promtool")) {
    const CommandResult r =
        capture("promtool check config " + shq(kContainerDir + "/compose/prometheus.yml"));
    EXPECT_EQ(r.status, 0) << r.output;
  }
}

}  // namespace
}  // namespace hiapi::test
