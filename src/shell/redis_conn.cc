#include "redis_conn.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/util.h>
#include <hiredis/hiredis.h>
#include <hiredis/read.h>

#include "hiapi/shell/tls.h"

namespace hiapi::shell {

RedisConn::RedisConn(event_base* base, std::function<void()> on_connected,
                     std::function<void(const std::string& why)> on_failed)
    : base_(base), on_connected_(std::move(on_connected)), on_failed_(std::move(on_failed)),
      reader_(redisReaderCreate()) {}

RedisConn::~RedisConn() {
  closed_ = true;
  waiting_.clear();
  if (bev_ != nullptr) {
    bufferevent_free(bev_);  // closes the socket and, for TLS, frees the SSL (CLOSE_ON_FREE)
  } else if (ssl_ != nullptr) {
    SSL_free(ssl_);
  }
  if (reader_ != nullptr) {
    redisReaderFree(reader_);
  }
}

bool RedisConn::connect(const std::string& ip, uint16_t port, SSL* ssl, std::string& error) {
  ssl_ = ssl;
  if (reader_ == nullptr) {
    error = "out of memory";
    return false;
  }
  sockaddr_storage addr{};
  int len = sizeof addr;
  const std::string text = (ip.find(':') != std::string::npos ? "[" + ip + "]" : ip) + ":" +
                           std::to_string(port);
  if (evutil_parse_sockaddr_port(text.c_str(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    error = "not an IP address: " + ip;
    return false;
  }
  bev_ = ssl_ != nullptr ? bufferevent_openssl_socket_new(base_, -1, ssl_,
                                                          BUFFEREVENT_SSL_CONNECTING,
                                                          BEV_OPT_CLOSE_ON_FREE)
                         : bufferevent_socket_new(base_, -1, BEV_OPT_CLOSE_ON_FREE);
  if (bev_ == nullptr) {
    error = "cannot create a connection";
    return false;
  }
  bufferevent_setcb(bev_, &RedisConn::onRead, nullptr, &RedisConn::onEvent, this);
  bufferevent_enable(bev_, EV_READ | EV_WRITE);
  if (bufferevent_socket_connect(bev_, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    error = evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR());
    return false;
  }
  return true;
}

bool RedisConn::command(const std::vector<std::string>& argv, ReplyFn done) {
  if (closed_ || bev_ == nullptr) {
    return false;
  }
  std::vector<const char*> args;
  std::vector<size_t> lens;
  args.reserve(argv.size());
  lens.reserve(argv.size());
  for (const std::string& a : argv) {
    args.push_back(a.data());
    lens.push_back(a.size());
  }
  char* cmd = nullptr;
  const int n = redisFormatCommandArgv(&cmd, static_cast<int>(args.size()), args.data(),
                                       lens.data());
  if (n < 0 || cmd == nullptr) {
    return false;
  }
  // Written before the connection is up, the bytes wait in the bufferevent until it is.
  const int wrote = bufferevent_write(bev_, cmd, static_cast<size_t>(n));
  redisFreeCommand(cmd);
  if (wrote != 0) {
    return false;
  }
  waiting_.push_back(std::move(done));
  return true;
}

void RedisConn::close() {
  closed_ = true;
  waiting_.clear();
  if (bev_ != nullptr) {
    // Freed by the destructor: this may run inside one of the bufferevent's own callbacks.
    bufferevent_setcb(bev_, nullptr, nullptr, nullptr, nullptr);
    bufferevent_disable(bev_, EV_READ | EV_WRITE);
  }
}

void RedisConn::onRead(bufferevent*, void* arg) { static_cast<RedisConn*>(arg)->readReplies(); }

void RedisConn::readReplies() {
  evbuffer* in = bufferevent_get_input(bev_);
  while (evbuffer_get_length(in) > 0) {
    const size_t n = evbuffer_get_contiguous_space(in);
    const auto* bytes = reinterpret_cast<const char*>(evbuffer_pullup(in, static_cast<ssize_t>(n)));
    if (redisReaderFeed(reader_, bytes, n) != REDIS_OK) {
      fail("cannot read a reply");
      return;
    }
    evbuffer_drain(in, n);
  }
  for (;;) {
    void* reply = nullptr;
    if (redisReaderGetReply(reader_, &reply) != REDIS_OK) {
      fail(std::string("protocol error: ") + reader_->errstr);
      return;
    }
    if (reply == nullptr) {
      return;  // the rest of a reply is still on its way
    }
    if (waiting_.empty()) {
      freeReplyObject(reply);
      fail("a reply to no command");
      return;
    }
    const ReplyFn done = std::move(waiting_.front());
    waiting_.pop_front();
    done(static_cast<redisReply*>(reply));
    freeReplyObject(reply);
    if (closed_) {
      return;  // the owner gave the connection up in that callback
    }
  }
}

void RedisConn::onEvent(bufferevent* bev, short what, void* arg) {
  auto* self = static_cast<RedisConn*>(arg);
  if ((what & BEV_EVENT_CONNECTED) != 0) {
    // Commands are small and pipelined: Nagle's delay would add to every round trip.
    const int one = 1;
    setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    self->on_connected_();
    return;
  }
  std::string why;
  if ((what & BEV_EVENT_EOF) != 0) {
    why = "closed by the server";
  } else if (self->ssl_ != nullptr) {
    why = describeTlsFailure(self->ssl_, bufferevent_get_openssl_error(bev),
                             evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
  } else {
    why = evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR());
  }
  self->fail(why);
}

void RedisConn::fail(const std::string& why) {
  if (closed_) {
    return;
  }
  if (bev_ != nullptr) {
    bufferevent_disable(bev_, EV_READ | EV_WRITE);
  }
  // As hiredis does: every command still waiting hears that no reply will come, then the owner
  // hears why. The owner may close() the connection in any of these calls.
  std::deque<ReplyFn> waiting = std::move(waiting_);
  waiting_.clear();
  for (const ReplyFn& done : waiting) {
    if (closed_) {
      return;
    }
    done(nullptr);
  }
  if (!closed_) {
    closed_ = true;
    on_failed_(why);
  }
}

}  // namespace hiapi::shell
