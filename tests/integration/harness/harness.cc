#include "harness.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hiapi/http/message.h"
#include "hiapi/http/response_parser.h"
#include "hiapi/shell/evhttp_method.h"

namespace hiapi::test {
namespace {

bool ieq(const std::string& a, const std::string& b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

int connectLoopback(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return -1;
  }
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    ::close(fd);
    return -1;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

bool sendAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) {
        continue;
      }
      return false;
    }
    off += static_cast<size_t>(n);
  }
  return true;
}

// Reads one HTTP/1.1 response (Content-Length, chunked, or until close) with the project's
// parser. A response cut short keeps what arrived (the status once its head was read).
HttpResponse readResponse(int fd, std::chrono::milliseconds timeout, bool head) {
  http::Response raw;
  http::ResponseParser parser;
  parser.begin(raw, head);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool more = true;
  while (more && !parser.complete()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
      break;
    }
    char tmp[65536];
    const ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) {
      parser.finish();
      break;
    }
    more = parser.feed(tmp, static_cast<size_t>(n));
  }
  HttpResponse r;
  r.status = raw.status;
  for (http::Header& h : raw.headers) {
    r.headers.emplace_back(std::move(h.name), std::move(h.value));
  }
  r.body = std::move(raw.body);
  return r;
}

bool isHead(const std::string& raw) { return raw.rfind("HEAD ", 0) == 0; }

std::string buildRequest(const std::string& method, const std::string& target,
                         const std::vector<std::pair<std::string, std::string>>& headers,
                         const std::string& body) {
  http::Headers list;
  for (const auto& [k, v] : headers) {
    list.push_back({k, v});
  }
  list.push_back({"Connection", "close"});
  std::string req;
  http::writeRequest(req, method, target, "127.0.0.1", list, body, http::UnsafeHeaders::Keep);
  return req;
}

}  // namespace

// ---- TempDir ------------------------------------------------------------------------------
TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/hiapi-test-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    throw std::runtime_error("mkdtemp failed");
  }
  path_ = buf.data();
}

TempDir::~TempDir() {
  if (std::getenv("HIAPI_KEEP_TEST_DIRS") == nullptr) {
    runCommand("rm -rf '" + path_ + "'");
  }
}

void TempDir::write(const std::string& name, const std::string& content) const {
  std::ofstream f(file(name), std::ios::binary | std::ios::trunc);
  f << content;
}

std::string readFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int runCommand(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// ---- TestCa --------------------------------------------------------------------------------
TestCa TestCa::create(const TempDir& dir, const std::vector<std::string>& dns_names,
                      const std::vector<std::string>& ips, const std::string& prefix) {
  TestCa ca;
  ca.ca_cert = dir.file(prefix + "-ca.pem");
  ca.ca_key = dir.file(prefix + "-ca.key");
  if (runCommand("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                 "-days 2 -subj '/CN=hiapi-proxy test CA' -keyout '" + ca.ca_key + "' -out '" +
                 ca.ca_cert + "' >/dev/null 2>&1") != 0) {
    throw std::runtime_error("openssl CLI failed to make the test CA");
  }
  std::tie(ca.server_cert, ca.server_key) = ca.issue(dir, dns_names, ips, prefix);
  return ca;
}

std::pair<std::string, std::string> TestCa::issue(const TempDir& dir,
                                                  const std::vector<std::string>& dns_names,
                                                  const std::vector<std::string>& ips,
                                                  const std::string& prefix) const {
  const std::string cert = dir.file(prefix + "-cert.pem");
  const std::string key = dir.file(prefix + "-key.pem");
  const std::string csr = dir.file(prefix + ".csr");
  const std::string ext = dir.file(prefix + ".ext");
  std::string san;
  for (const auto& d : dns_names) {
    san += (san.empty() ? "" : ",") + std::string("DNS:") + d;
  }
  for (const auto& i : ips) {
    san += (san.empty() ? "" : ",") + std::string("IP:") + i;
  }
  dir.write(prefix + ".ext", "basicConstraints=CA:FALSE\nsubjectAltName=" + san +
                                 "\nextendedKeyUsage=serverAuth\n");
  const std::string q = " >/dev/null 2>&1";
  if (runCommand("openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                 "-subj '/CN=" + (dns_names.empty() ? std::string("test") : dns_names.front()) +
                 "' -keyout '" + key + "' -out '" + csr + "'" + q) != 0 ||
      runCommand("openssl x509 -req -in '" + csr + "' -CA '" + ca_cert + "' -CAkey '" + ca_key +
                 "' -CAcreateserial -days 2 -extfile '" + ext + "' -out '" + cert + "'" + q) !=
          0) {
    throw std::runtime_error("openssl CLI failed to sign a test certificate");
  }
  return {cert, key};
}

// ---- Process -------------------------------------------------------------------------------
Process::Process(const std::vector<std::string>& argv, const std::string& log_prefix,
                 const std::vector<std::string>& extra_env)
    : out_path_(log_prefix + ".out"), err_path_(log_prefix + ".err") {
  pid_ = fork();
  if (pid_ == 0) {
    const int out = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, 1);
    dup2(err, 2);
    for (const auto& e : extra_env) {
      putenv(const_cast<char*>(strdup(e.c_str())));
    }
    std::vector<char*> args;
    for (const auto& a : argv) {
      args.push_back(const_cast<char*>(a.c_str()));
    }
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
}

Process::~Process() {
  if (running()) {
    signal(SIGKILL);
    wait(5000ms);
  }
}

void Process::signal(int sig) {
  if (pid_ > 0 && !status_) {
    ::kill(pid_, sig);
  }
}

bool Process::running() {
  if (pid_ <= 0 || status_) {
    return false;
  }
  int st = 0;
  const pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return false;
  }
  return true;
}

std::optional<int> Process::wait(std::chrono::milliseconds timeout) {
  waitFor([this] { return !running(); }, timeout);
  return status_;
}

std::string Process::out() const { return readFile(out_path_); }
std::string Process::err() const { return readFile(err_path_); }

uint16_t unusedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  socklen_t len = sizeof sa;
  getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  ::close(fd);  // nothing listens there any more
  return ntohs(sa.sin_port);
}

double metricSum(const std::string& text, const std::string& name,
                 const std::string& label_part) {
  double sum = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.compare(0, name.size(), name) != 0 || line.size() <= name.size() ||
        (line[name.size()] != '{' && line[name.size()] != ' ')) {
      continue;  // another family, or one whose name only starts like this one
    }
    const size_t space = line.rfind(' ');
    const std::string labels = line.substr(name.size(), space - name.size());
    if (labels.find(label_part) != std::string::npos) {
      sum += std::strtod(line.c_str() + space + 1, nullptr);
    }
  }
  return sum;
}

bool waitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (pred()) {
      return true;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return false;
    }
    std::this_thread::sleep_for(10ms);
  }
}

// ---- HTTP client ---------------------------------------------------------------------------
std::string HttpResponse::header(const std::string& name) const {
  for (const auto& [k, v] : headers) {
    if (ieq(k, name)) {
      return v;
    }
  }
  return {};
}

bool HttpResponse::has(const std::string& name) const {
  return std::any_of(headers.begin(), headers.end(),
                     [&](const auto& kv) { return ieq(kv.first, name); });
}

HttpResponse httpRaw(uint16_t port, const std::string& raw, std::chrono::milliseconds timeout) {
  const int fd = connectLoopback(port);
  if (fd < 0) {
    return {};
  }
  HttpResponse r;
  if (sendAll(fd, raw)) {
    r = readResponse(fd, timeout, isHead(raw));
  }
  ::close(fd);
  return r;
}

HttpResponse httpRequest(uint16_t port, const std::string& method, const std::string& target,
                         const std::vector<std::pair<std::string, std::string>>& headers,
                         const std::string& body, std::chrono::milliseconds timeout) {
  return httpRaw(port, buildRequest(method, target, headers, body), timeout);
}

OpenRequest::OpenRequest(uint16_t port, const std::string& raw) : head_(isHead(raw)) {
  fd_ = connectLoopback(port);
  if (fd_ >= 0) {
    sendAll(fd_, raw);
  }
}

OpenRequest::~OpenRequest() { close(); }

void OpenRequest::close() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

HttpResponse OpenRequest::read(std::chrono::milliseconds timeout) {
  return fd_ < 0 ? HttpResponse{} : readResponse(fd_, timeout, head_);
}

// ---- TestUpstream --------------------------------------------------------------------------
std::string RecordedRequest::header(const std::string& name) const {
  for (const auto& [k, v] : headers) {
    if (ieq(k, name)) {
      return v;
    }
  }
  return {};
}

bool RecordedRequest::has(const std::string& name) const {
  return std::any_of(headers.begin(), headers.end(),
                     [&](const auto& kv) { return ieq(kv.first, name); });
}

namespace {
bufferevent* sslBevCb(event_base* base, void* arg) {
  auto* ctx = static_cast<SSL_CTX*>(arg);
  return bufferevent_openssl_socket_new(base, -1, SSL_new(ctx), BUFFEREVENT_SSL_ACCEPTING,
                                        BEV_OPT_CLOSE_ON_FREE);
}
}  // namespace

TestUpstream::TestUpstream(const std::string& cert, const std::string& key) {
  http_ = evhttp_new(loop_.base());
  evhttp_set_allowed_methods(http_, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                        EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
                                        EVHTTP_REQ_OPTIONS);
  if (!cert.empty()) {
    ssl_ctx_ = SSL_CTX_new(TLS_server_method());
    if (SSL_CTX_use_certificate_chain_file(ssl_ctx_, cert.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ssl_ctx_, key.c_str(), SSL_FILETYPE_PEM) != 1) {
      throw std::runtime_error("test upstream: cannot load the certificate");
    }
    evhttp_set_bevcb(http_, &sslBevCb, ssl_ctx_);
  }
  evhttp_set_gencb(http_, &TestUpstream::onRequest, this);
  evhttp_bound_socket* b = evhttp_bind_socket_with_handle(http_, "127.0.0.1", 0);
  if (b == nullptr) {
    throw std::runtime_error("test upstream: cannot bind");
  }
  sockaddr_in sa{};
  socklen_t len = sizeof sa;
  getsockname(evhttp_bound_socket_get_fd(b), reinterpret_cast<sockaddr*>(&sa), &len);
  port_ = ntohs(sa.sin_port);
  handler_ = [](const RecordedRequest&) {
    Reply r;
    r.headers = {{"Content-Type", "application/json"},
                 {"X-Upstream", "yes"},
                 {"Keep-Alive", "timeout=5"},
                 {"X-Drop-Me", "hop"},
                 {"Connection", "X-Drop-Me"}};
    r.body = R"({"code":200,"message":"success","data":{"taskId":"tk-hiapi-01HZTQ8BX2N3GM3YFK4Z9D7VQR"}})";
    return r;
  };
  loop_.start();
}

TestUpstream::~TestUpstream() {
  loop_.stop();
  evhttp_free(http_);
  if (ssl_ctx_ != nullptr) {
    SSL_CTX_free(ssl_ctx_);
  }
}

void TestUpstream::setHandler(Handler h) {
  std::lock_guard<std::mutex> lock(mu_);
  handler_ = std::move(h);
}

std::vector<RecordedRequest> TestUpstream::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

size_t TestUpstream::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_.size();
}

void TestUpstream::onRequest(evhttp_request* req, void* arg) {
  auto* self = static_cast<TestUpstream*>(arg);
  RecordedRequest rec;
  rec.method = shell::evhttpMethodName(evhttp_request_get_command(req));
  rec.uri = evhttp_request_get_uri(req);
  const evkeyvalq* in = evhttp_request_get_input_headers(req);
  for (const evkeyval* kv = in->tqh_first; kv != nullptr; kv = kv->next.tqe_next) {
    rec.headers.emplace_back(kv->key, kv->value);
  }
  evbuffer* b = evhttp_request_get_input_buffer(req);
  rec.body.resize(evbuffer_get_length(b));
  evbuffer_copyout(b, rec.body.data(), rec.body.size());
  Handler h;
  {
    std::lock_guard<std::mutex> lock(self->mu_);
    self->requests_.push_back(rec);
    h = self->handler_;
  }
  Reply reply = h(rec);
  if (reply.no_reply) {
    std::lock_guard<std::mutex> lock(self->mu_);
    self->held_.push_back(req);
    return;
  }
  auto send = [req, reply]() {
    evkeyvalq* out = evhttp_request_get_output_headers(req);
    for (const auto& [k, v] : reply.headers) {
      evhttp_add_header(out, k.c_str(), v.c_str());
    }
    evbuffer* body = evbuffer_new();
    evbuffer_add(body, reply.body.data(), reply.body.size());
    evhttp_send_reply(req, reply.status, nullptr, body);
    evbuffer_free(body);
  };
  if (reply.delay.count() > 0) {
    auto* fn = new std::function<void()>(send);
    const timeval tv{static_cast<time_t>(reply.delay.count() / 1000),
                     static_cast<suseconds_t>((reply.delay.count() % 1000) * 1000)};
    event_base_once(
        self->loop_.base(), -1, EV_TIMEOUT,
        [](evutil_socket_t, short, void* a) {
          auto* f = static_cast<std::function<void()>*>(a);
          (*f)();
          delete f;
        },
        fn, &tv);
    return;
  }
  send();
}

// ---- ProxyProcess / SimProcess -------------------------------------------------------------
namespace {
std::optional<uint16_t> readPortLine(const std::string& path, const std::string& key) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key + "=", 0) == 0) {
      return static_cast<uint16_t>(std::atoi(line.substr(key.size() + 1).c_str()));
    }
  }
  return std::nullopt;
}
}  // namespace

ProxyProcess::ProxyProcess(const TempDir& dir, const std::string& yaml,
                           const std::vector<std::string>& extra_env, const std::string& name) {
  config_path_ = dir.file(name + ".yaml");
  dir.write(name + ".yaml", yaml);
  const std::string port_file = dir.file(name + ".ports");
  proc_ = std::make_unique<Process>(
      std::vector<std::string>{HIAPI_PROXY_BIN, "--config", config_path_, "--port-file",
                               port_file},
      dir.file(name), extra_env);
  waitFor(
      [&] {
        if (auto p = readPortLine(port_file, "proxy")) {
          port_ = *p;
          admin_port_ = readPortLine(port_file, "admin").value_or(0);
          return true;
        }
        return !proc_->running();
      },
      15000ms);
}

ProxyProcess::~ProxyProcess() {
  if (proc_ && proc_->running()) {
    proc_->signal(SIGTERM);
    if (!proc_->wait(10000ms)) {
      proc_->signal(SIGKILL);
      proc_->wait(5000ms);
    }
  }
}

SimProcess::SimProcess(const TempDir& dir, const std::vector<std::string>& flags,
                       const std::string& name) {
  const std::string port_file = dir.file(name + ".port");
  std::vector<std::string> argv{HIAPI_SIM_BIN, "--port", "0", "--port-file", port_file};
  argv.insert(argv.end(), flags.begin(), flags.end());
  proc_ = std::make_unique<Process>(argv, dir.file(name));
  waitFor(
      [&] {
        const std::string s = readFile(port_file);
        if (!s.empty()) {
          port_ = static_cast<uint16_t>(std::atoi(s.c_str()));
          return port_ != 0;
        }
        return !proc_->running();
      },
      15000ms);
}

SimProcess::~SimProcess() {
  if (proc_ && proc_->running()) {
    proc_->signal(SIGTERM);
    if (!proc_->wait(5000ms)) {
      proc_->signal(SIGKILL);
      proc_->wait(5000ms);
    }
  }
}

}  // namespace hiapi::test
