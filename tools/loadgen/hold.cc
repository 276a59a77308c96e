// hiapi-load --hold N: opens N connections at once, sends one request on each, and waits for
// every answer (one thread, epoll, non-blocking sockets). Answers a proxy queue must give: all
// served or turned away (429), none dropped.

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <strings.h>
#include <fstream>
#include <map>
#include <vector>

#include <netdb.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include "http_client.h"
#include "hiapi/http/message.h"
#include "hiapi/http/response_parser.h"
#include "loadgen.h"
#include "report.h"

namespace hiapi::load {
namespace {

enum class Phase : uint8_t { Idle, Connecting, Sending, Reading, Done };

struct Conn {
  int fd = -1;
  Phase phase = Phase::Idle;
  size_t sent = 0;
  std::string req;
  std::string buf;
  Clock::time_point t0;
};

struct Parsed {
  bool complete = false;
  int status = 0;
  std::string proxy_error;
};

// Parses what a connection has read so far from the start: replies here are small, and a
// parser kept per connection would have to outlive the vector of 10,000 of them.
Parsed parseReply(const std::string& buf, bool eof) {
  http::Response reply;
  http::ResponseParser parser;
  parser.begin(reply, false);
  parser.feed(buf.data(), buf.size());
  if (eof) {
    parser.finish();
  }
  Parsed p;
  using Problem = http::ResponseParser::Problem;
  p.complete = parser.complete() ||
               (parser.problem() != Problem::None && parser.problem() != Problem::Incomplete);
  if (parser.complete()) {
    p.status = reply.status;
    if (const std::string* e = http::findHeader(reply.headers, "X-HiAPI-Proxy-Error")) {
      p.proxy_error = *e;
    }
  }
  return p;
}

}  // namespace

int runHold(const Options& o) {
  Endpoint ep;
  std::string error;
  if (!Endpoint::parse(o.target, &ep, &error)) {
    std::fprintf(stderr, "hiapi-load: %s\n", error.c_str());
    return 2;
  }
  // One fd per connection plus a few: raise the soft limit up to the hard one.
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  const rlim_t need = static_cast<rlim_t>(o.hold) + 64;
  if (rl.rlim_cur < need) {
    rl.rlim_cur = std::min(need, rl.rlim_max);
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur < need) {
    std::fprintf(stderr,
                 "hiapi-load: --hold %d needs %llu file descriptors, the limit is %llu "
                 "(raise it: ulimit -n %llu)\n",
                 o.hold, static_cast<unsigned long long>(need),
                 static_cast<unsigned long long>(rl.rlim_cur),
                 static_cast<unsigned long long>(need));
    return 2;
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(ep.host.c_str(), std::to_string(ep.port).c_str(), &hints, &res) != 0 ||
      res == nullptr) {
    std::fprintf(stderr, "hiapi-load: cannot resolve %s\n", ep.host.c_str());
    return 2;
  }
  const int epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) {
    std::fprintf(stderr, "hiapi-load: epoll_create1: %s\n", std::strerror(errno));
    freeaddrinfo(res);
    return 2;
  }
  const std::string key = o.groups.empty() ? std::string() : o.groups.front().key;
  const std::string cls = o.groups.empty() || o.groups.front().name.empty()
                              ? std::string("hold")
                              : o.groups.front().name;
  const std::string prefix = o.prompt_prefix.empty() ? "hold-" + std::to_string(o.seed) + "-" +
                                                           std::to_string(::time(nullptr))
                                                     : o.prompt_prefix;

  std::vector<Conn> conns(static_cast<size_t>(o.hold));
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(o.max_duration_s));
  int64_t connect_failed = 0, closed_without_answer = 0, answered = 0, open_now = 0, peak_open = 0;
  std::map<int, int64_t> by_status;
  std::map<std::string, int64_t> proxy_errors;
  std::vector<double> latencies;
  double all_sent_s = -1, last_answer_s = 0;
  int64_t sent_count = 0;
  size_t next = 0;

  auto since = [&](Clock::time_point t) { return std::chrono::duration<double>(t - start).count(); };
  auto finish = [&](size_t i) {
    Conn& c = conns[i];
    if (c.fd >= 0) {
      epoll_ctl(epfd, EPOLL_CTL_DEL, c.fd, nullptr);
      ::close(c.fd);
      c.fd = -1;
      --open_now;
    }
    c.phase = Phase::Done;
    std::string().swap(c.buf);
    std::string().swap(c.req);
  };
  auto openOne = [&](size_t i) {
    Conn& c = conns[i];
    std::string body;
    if (o.hold_method == "POST") {
      body = R"({"model":")" + o.light_model + R"(","input":{"prompt":")" + prefix + "-" +
             std::to_string(i) + R"("}})";
    }
    http::Headers headers{{"X-HiAPI-Client", cls}, {"Content-Type", "application/json"}};
    if (!key.empty()) {
      headers.push_back({"Authorization", "Bearer " + key});
    }
    if (!o.hold_deadline.empty()) {
      headers.push_back({"X-HiAPI-Deadline", o.hold_deadline});
    }
    headers.push_back({"Connection", "close"});
    http::writeRequest(c.req, o.hold_method, o.hold_path, ep.host, headers, body,
                       http::UnsafeHeaders::Keep);
    c.t0 = Clock::now();
    c.fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
      ++connect_failed;
      c.phase = Phase::Done;
      return;
    }
    ++open_now;
    peak_open = std::max(peak_open, open_now);
    const int rc = ::connect(c.fd, res->ai_addr, res->ai_addrlen);
    if (rc != 0 && errno != EINPROGRESS) {
      ++connect_failed;
      finish(i);
      return;
    }
    c.phase = Phase::Connecting;
    epoll_event ev{};
    ev.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = i;
    epoll_ctl(epfd, EPOLL_CTL_ADD, c.fd, &ev);
  };

  std::vector<epoll_event> events(1024);
  int64_t done = 0;
  const int64_t total = o.hold;
  while (done < total && Clock::now() < deadline) {
    // Open connections: all at once, or at --hold-rate per second.
    const size_t allowed =
        o.hold_connect_rate > 0
            ? std::min<size_t>(conns.size(), static_cast<size_t>(since(Clock::now()) *
                                                                 o.hold_connect_rate) + 1)
            : conns.size();
    while (next < allowed) {
      openOne(next++);
      if (conns[next - 1].phase == Phase::Done) {
        ++done;
      }
    }
    const int n = epoll_wait(epfd, events.data(), static_cast<int>(events.size()), 20);
    for (int k = 0; k < n; ++k) {
      const size_t i = events[k].data.u64;
      Conn& c = conns[i];
      if (c.phase == Phase::Done) {
        continue;
      }
      const uint32_t ev = events[k].events;
      if (c.phase == Phase::Connecting && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          ++connect_failed;
          finish(i);
          ++done;
          continue;
        }
        c.phase = Phase::Sending;
      }
      if (c.phase == Phase::Sending) {
        while (c.sent < c.req.size()) {
          const ssize_t w = ::send(c.fd, c.req.data() + c.sent, c.req.size() - c.sent, MSG_NOSIGNAL);
          if (w <= 0) {
            break;
          }
          c.sent += static_cast<size_t>(w);
        }
        if (c.sent == c.req.size()) {
          c.phase = Phase::Reading;
          ++sent_count;
          if (sent_count == total) {
            all_sent_s = since(Clock::now());
          }
          epoll_event mod{};
          mod.events = EPOLLIN | EPOLLRDHUP;
          mod.data.u64 = i;
          epoll_ctl(epfd, EPOLL_CTL_MOD, c.fd, &mod);
        }
        continue;
      }
      if (c.phase == Phase::Reading) {
        bool eof = false;
        char tmp[8192];
        for (;;) {
          const ssize_t r = ::recv(c.fd, tmp, sizeof tmp, 0);
          if (r > 0) {
            c.buf.append(tmp, static_cast<size_t>(r));
            continue;
          }
          if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
            eof = true;
          }
          break;
        }
        const Parsed p = parseReply(c.buf, eof);
        if (p.complete && p.status > 0) {
          ++answered;
          ++by_status[p.status];
          if (!p.proxy_error.empty()) {
            ++proxy_errors[p.proxy_error];
          }
          const auto now = Clock::now();
          latencies.push_back(std::chrono::duration<double, std::milli>(now - c.t0).count());
          last_answer_s = since(now);
          finish(i);
          ++done;
        } else if (eof) {
          ++closed_without_answer;
          finish(i);
          ++done;
        }
      }
    }
  }
  int64_t unanswered = 0, never_sent = 0;
  for (size_t i = 0; i < conns.size(); ++i) {
    if (conns[i].phase == Phase::Done) {
      continue;
    }
    if (conns[i].phase == Phase::Reading) {
      ++unanswered;
    } else {
      ++never_sent;
    }
    finish(i);
  }
  never_sent += static_cast<int64_t>(conns.size() - next);
  ::close(epfd);
  freeaddrinfo(res);
  const double wall = since(Clock::now());
  const Percentiles lat = Percentiles::of(latencies);
  const bool lossless = answered == total;

  FILE* out = o.json_path == "-" ? stderr : stdout;
  if (!o.quiet) {
    std::fprintf(out,
                 "hiapi-load --hold %d → %s %s %s\n"
                 "all sent after %.2f s, last answer at %.2f s, peak open %lld\n"
                 "answered %lld of %d, closed without answer %lld, connect failed %lld, "
                 "unanswered at --max-duration %lld, never sent %lld → %s\n",
                 o.hold, o.target.c_str(), o.hold_method.c_str(), o.hold_path.c_str(), all_sent_s,
                 last_answer_s, static_cast<long long>(peak_open), static_cast<long long>(answered),
                 o.hold, static_cast<long long>(closed_without_answer),
                 static_cast<long long>(connect_failed), static_cast<long long>(unanswered),
                 static_cast<long long>(never_sent), lossless ? "no loss" : "LOSS");
    std::fprintf(out, "by status:");
    for (const auto& [st, n] : by_status) {
      std::fprintf(out, " %d=%lld", st, static_cast<long long>(n));
    }
    std::fprintf(out, " | proxy errors:");
    for (const auto& [code, n] : proxy_errors) {
      std::fprintf(out, " %s=%lld", code.c_str(), static_cast<long long>(n));
    }
    std::fprintf(out, "\nlatency p50 %.0f ms, p95 %.0f ms, p99 %.0f ms, max %.0f ms\n", lat.p50,
                 lat.p95, lat.p99, lat.max);
  }
  if (!o.json_path.empty()) {
    rapidjson::StringBuffer sb;
    rapidjson::PrettyWriter<rapidjson::StringBuffer> w(sb);
    w.SetMaxDecimalPlaces(3);
    w.StartObject();
    w.Key("label");
    w.String(o.label.c_str());
    w.Key("target");
    w.String(o.target.c_str());
    w.Key("connections");
    w.Int(o.hold);
    w.Key("answered");
    w.Int64(answered);
    w.Key("closed_without_answer");
    w.Int64(closed_without_answer);
    w.Key("connect_failed");
    w.Int64(connect_failed);
    w.Key("unanswered");
    w.Int64(unanswered);
    w.Key("never_sent");
    w.Int64(never_sent);
    w.Key("lossless");
    w.Bool(lossless);
    w.Key("peak_open");
    w.Int64(peak_open);
    w.Key("all_sent_s");
    w.Double(all_sent_s);
    w.Key("last_answer_s");
    w.Double(last_answer_s);
    w.Key("wall_s");
    w.Double(wall);
    w.Key("by_status");
    w.StartObject();
    for (const auto& [st, n] : by_status) {
      w.Key(std::to_string(st).c_str());
      w.Int64(n);
    }
    w.EndObject();
    w.Key("proxy_errors");
    w.StartObject();
    for (const auto& [code, n] : proxy_errors) {
      w.Key(code.c_str());
      w.Int64(n);
    }
    w.EndObject();
    w.Key("latency_ms");
    w.StartObject();
    w.Key("p50");
    w.Double(lat.p50);
    w.Key("p95");
    w.Double(lat.p95);
    w.Key("p99");
    w.Double(lat.p99);
    w.Key("max");
    w.Double(lat.max);
    w.EndObject();
    w.EndObject();
    if (o.json_path == "-") {
      std::fwrite(sb.GetString(), 1, sb.GetSize(), stdout);
      std::fputc('\n', stdout);
    } else {
      std::ofstream f(o.json_path);
      f << sb.GetString() << '\n';
    }
  }
  return lossless ? 0 : 1;
}

}  // namespace hiapi::load
