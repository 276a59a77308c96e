// Fuzz target for the client-facing request stream: the bytes go to a real HttpServer over a
// socketpair, cut into pieces at points the input chooses (the first byte seeds the cuts), with
// the event loop run between pieces. Any request the server hands over is answered at once.
// Checks: no crash or sanitizer report, and every connection is gone after the client closes.
// Built as a libFuzzer binary with clang (-DHIAPI_FUZZ=ON), and always as a replay test over
// the checked-in corpus (tests/fuzz/corpus/http_request) and seeded mutations of it.

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "hiapi/shell/http_server.h"
#include "hiapi/shell/log.h"

namespace {

using namespace hiapi;

class Answer : public shell::HttpServer::Handler {
public:
  shell::HttpServer* server = nullptr;
  void onRequest(uint64_t exchange, shell::InboundRequest& req) override {
    server->reply(exchange, req.problem == shell::InboundProblem::None ? 200 : 400,
                  {{"Content-Type", "text/plain"}}, req.body);
  }
  void onClientGone(uint64_t) override {}
};

struct World {
  event_base* base = event_base_new();
  shell::Logger log{core::LogFormat::Logfmt, core::LogLevel::Error};
  Answer answer;
  std::unique_ptr<shell::HttpServer> server;
  World() {
    shell::HttpServerLimits limits;
    limits.max_header_bytes = 2048;
    limits.max_body_bytes = 4096;
    server = std::make_unique<shell::HttpServer>(base, answer, log, limits);
    answer.server = server.get();
  }
};

World& world() {
  static World w;
  return w;
}

void turn(World& w, int fd) {
  event_base_loop(w.base, EVLOOP_NONBLOCK);
  char sink[16384];
  while (::recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = world();
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) {
    return 0;
  }
  w.server->adoptForTest(fds[0]);
  uint32_t cut = size > 0 ? data[0] * 2654435761u + 1 : 1;
  size_t off = size > 0 ? 1 : 0;
  while (off < size) {
    cut = cut * 1103515245u + 12345u;
    const size_t n = std::min<size_t>(size - off, 1 + (cut >> 16) % 64);
    const ssize_t sent = ::send(fds[1], data + off, n, MSG_NOSIGNAL);
    if (sent <= 0) {
      turn(w, fds[1]);  // the server reads (or has closed: then nothing more goes in)
      if (sent < 0 && errno != EAGAIN) {
        break;
      }
      continue;
    }
    off += static_cast<size_t>(sent);
    turn(w, fds[1]);
  }
  ::shutdown(fds[1], SHUT_WR);
  turn(w, fds[1]);
  ::close(fds[1]);
  // The server sees the close and lets the connection go within a few loop turns.
  for (int i = 0; i < 50 && w.server->connections() > 0; ++i) {
    event_base_loop(w.base, EVLOOP_NONBLOCK);
  }
  if (w.server->connections() != 0) {
    __builtin_trap();  // a connection outlived its client
  }
  return 0;
}
