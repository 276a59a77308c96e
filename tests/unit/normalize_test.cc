// normalize(): every row of the README's routing table and of its error table that a request's
// line and headers decide, table-driven, plus header filtering and key selection.

#include <gtest/gtest.h>

#include "hiapi/core/normalize.h"

namespace hiapi::core {
namespace {

Config makeConfig(KeyMode mode) {
  Config cfg;
  cfg.key_mode = mode;
  cfg.upstream.url = "https://api.hiapi.ai";
  cfg.upstream.host = "api.hiapi.ai";
  cfg.listen.address = "127.0.0.1";
  if (mode == KeyMode::Inject) {
    cfg.keys.push_back(KeyConfig{"prod", Secret("sk-prod"), "", std::nullopt, std::nullopt});
    cfg.keys.push_back(KeyConfig{"batch", Secret("sk-batch"), "", std::nullopt, std::nullopt});
  }
  return cfg;
}

const ListenerName kSelf{"127.0.0.1", 9786};

// A Normalized points into its config (the key it chose): the configs outlive every test.
const Config& configFor(KeyMode mode) {
  static const Config passthrough = makeConfig(KeyMode::Passthrough);
  static const Config inject = makeConfig(KeyMode::Inject);
  return mode == KeyMode::Inject ? inject : passthrough;
}

std::variant<Normalized, Refusal> run(KeyMode mode, std::string method, std::string target,
                                      http::Headers headers = {{"Authorization", "Bearer sk-c"}}) {
  InboundHead in{std::move(method), std::move(target), std::move(headers)};
  return normalize(std::move(in), configFor(mode), kSelf);
}

struct RouteRow {
  const char* method;
  const char* target;
  RouteKind kind;
  const char* task_id;
  const char* upstream_target;
};

TEST(Normalize, RoutesEveryRowOfTheRoutingTable) {
  const RouteRow rows[] = {
      {"POST", "/v1/tasks", RouteKind::Create, "", "/v1/tasks"},
      {"GET", "/v1/tasks/tk-hiapi-1", RouteKind::Poll, "tk-hiapi-1", "/v1/tasks/tk-hiapi-1"},
      {"GET", "/v1/tasks/tk%2Dhiapi%2D2", RouteKind::Poll, "tk-hiapi-2", "/v1/tasks/tk%2Dhiapi%2D2"},
      {"GET", "/v1/tasks?page=1&size=5", RouteKind::List, "", "/v1/tasks?page=1&size=5"},
      {"GET", "/v1/tasks/hp-tk-01ABC", RouteKind::Poll, "hp-tk-01ABC", "/v1/tasks/hp-tk-01ABC"},
      {"DELETE", "/v1/tasks/hp-tk-01ABC", RouteKind::Other, "", "/v1/tasks/hp-tk-01ABC"},
      {"GET", "/v1/models", RouteKind::Other, "", "/v1/models"},
      {"PATCH", "/v1/anything/else", RouteKind::Other, "", "/v1/anything/else"},
      {"OPTIONS", "/v1/tasks", RouteKind::Other, "", "/v1/tasks"},
      // Absolute form naming the upstream or this machine is served like origin form.
      {"GET", "https://api.hiapi.ai/v1/tasks/tk-3", RouteKind::Poll, "tk-3", "/v1/tasks/tk-3"},
      {"POST", "http://127.0.0.1:9786/v1/tasks", RouteKind::Create, "", "/v1/tasks"},
      {"GET", "http://localhost/v1/tasks", RouteKind::List, "", "/v1/tasks"},
  };
  for (const RouteRow& r : rows) {
    SCOPED_TRACE(std::string(r.method) + " " + r.target);
    auto out = run(KeyMode::Passthrough, r.method, r.target);
    ASSERT_TRUE(std::holds_alternative<Normalized>(out))
        << std::get<Refusal>(out).message;
    const Normalized& n = std::get<Normalized>(out);
    EXPECT_EQ(n.route.kind, r.kind);
    EXPECT_EQ(n.route.task_id, r.task_id);
    EXPECT_EQ(n.target, r.upstream_target);
    EXPECT_EQ(http::methodName(n.method), r.method);
  }
}

struct ErrorRow {
  KeyMode mode;
  const char* method;
  const char* target;
  http::Headers headers;
  ProxyError error;
  const char* message_part;  ///< "" = the error's own message
};

TEST(Normalize, RefusesEveryRowOfTheErrorTableItDecides) {
  const http::Headers auth{{"Authorization", "Bearer sk-c"}};
  const ErrorRow rows[] = {
      {KeyMode::Passthrough, "CONNECT", "api.hiapi.ai:443", auth, ProxyError::MethodNotAllowed, ""},
      {KeyMode::Passthrough, "TRACE", "/v1/tasks", auth, ProxyError::MethodNotAllowed, ""},
      {KeyMode::Passthrough, "get", "/v1/tasks", auth, ProxyError::MethodNotAllowed, ""},
      {KeyMode::Passthrough, "PROPFIND", "/v1/tasks", auth, ProxyError::MethodNotAllowed, ""},
      {KeyMode::Passthrough, "GET", "http://evil.example/v1/tasks", auth,
       ProxyError::NotAnOpenProxy, "not to evil.example"},
      {KeyMode::Passthrough, "GET", "*", auth, ProxyError::BadRequest, "must start with /"},
      {KeyMode::Passthrough, "GET", "v1/tasks", auth, ProxyError::BadRequest, "must start with /"},
      {KeyMode::Passthrough, "GET", "/v1/../metrics", auth, ProxyError::BadRequest, "dot segments"},
      {KeyMode::Passthrough, "GET", "/v1/%2e%2e/x", auth, ProxyError::BadRequest, "dot segments"},
      {KeyMode::Passthrough, "GET", "/v1/./tasks", auth, ProxyError::BadRequest, "dot segments"},
      {KeyMode::Passthrough, "GET", "/metrics", auth, ProxyError::NotFound,
       "set the base URL to http://127.0.0.1:9786"},
      {KeyMode::Passthrough, "GET", "/", auth, ProxyError::NotFound, "/v1/"},
      {KeyMode::Passthrough, "GET", "/v2/tasks", auth, ProxyError::NotFound, "/v1/"},
      {KeyMode::Passthrough, "GET", "/v1/tasks", {}, ProxyError::MissingApiKey, ""},
      {KeyMode::Passthrough, "GET", "/v1/tasks", {{"Authorization", ""}}, ProxyError::MissingApiKey,
       ""},
      {KeyMode::Inject, "GET", "/v1/tasks", {{"X-HiAPI-Key", "staging"}}, ProxyError::MissingApiKey,
       "no configured key is named 'staging'"},
  };
  for (const ErrorRow& r : rows) {
    SCOPED_TRACE(std::string(r.method) + " " + r.target);
    auto out = run(r.mode, r.method, r.target, r.headers);
    ASSERT_TRUE(std::holds_alternative<Refusal>(out));
    const Refusal& refusal = std::get<Refusal>(out);
    EXPECT_EQ(proxyErrorInfo(refusal.error).code, proxyErrorInfo(r.error).code);
    EXPECT_NE(refusal.message.find(r.message_part), std::string::npos) << refusal.message;
  }
}

TEST(Normalize, InjectWithoutAnyKeyIsMissingApiKey) {
  Config cfg = makeConfig(KeyMode::Inject);
  cfg.keys.clear();
  InboundHead in{"GET", "/v1/tasks", {}};
  auto out = normalize(std::move(in), cfg, kSelf);
  ASSERT_TRUE(std::holds_alternative<Refusal>(out));
  EXPECT_EQ(std::get<Refusal>(out).error, ProxyError::MissingApiKey);
}

TEST(Normalize, KeepsEndToEndHeadersInOrderAndTakesOutTheRest) {
  http::Headers in{{"Content-Type", "application/json"},
                   {"Host", "127.0.0.1:9786"},
                   {"Connection", "keep-alive, X-Hop"},
                   {"X-Hop", "1"},
                   {"Content-Length", "2"},
                   {"Expect", "100-continue"},
                   {"Proxy-Authorization", "Basic x"},
                   {"Idempotency-Key", "abc"},
                   {"X-HiAPI-Client", "svc-a"},
                   {"X-HiAPI-Deadline", "2500ms"},
                   {"authorization", "Bearer sk-client"},
                   {"X-Trace", "t"}};
  auto out = run(KeyMode::Passthrough, "POST", "/v1/tasks", in);
  ASSERT_TRUE(std::holds_alternative<Normalized>(out));
  const Normalized& n = std::get<Normalized>(out);
  ASSERT_EQ(n.headers.size(), 3u);
  EXPECT_EQ(n.headers[0].name, "Content-Type");
  EXPECT_EQ(n.headers[1].name, "Idempotency-Key");
  EXPECT_EQ(n.headers[2].name, "X-Trace");
  EXPECT_EQ(n.client, "svc-a");
  ASSERT_TRUE(n.client_deadline);
  EXPECT_EQ(*n.client_deadline, std::chrono::milliseconds(2500));
  EXPECT_EQ(n.authorization, "Bearer sk-client");
  EXPECT_EQ(n.key, nullptr);
}

TEST(Normalize, InjectSendsTheChosenKeyAndDropsTheClientsAuthorization) {
  auto first = run(KeyMode::Inject, "GET", "/v1/tasks", {{"Authorization", "Bearer sk-c"}});
  ASSERT_TRUE(std::holds_alternative<Normalized>(first));
  EXPECT_EQ(std::get<Normalized>(first).key->name, "prod");
  EXPECT_EQ(std::get<Normalized>(first).authorization, "Bearer sk-prod");
  EXPECT_TRUE(std::get<Normalized>(first).headers.empty());

  auto chosen = run(KeyMode::Inject, "GET", "/v1/tasks", {{"x-hiapi-key", "batch"}});
  ASSERT_TRUE(std::holds_alternative<Normalized>(chosen));
  EXPECT_EQ(std::get<Normalized>(chosen).key->name, "batch");
  EXPECT_EQ(std::get<Normalized>(chosen).authorization, "Bearer sk-batch");
}

TEST(Normalize, BoundsTheFairnessClassAndIgnoresAnUnreadableDeadline) {
  const std::string long_class(200, 'c');
  auto out = run(KeyMode::Passthrough, "GET", "/v1/tasks",
                 {{"Authorization", "Bearer k"}, {"X-HiAPI-Client", long_class},
                  {"X-HiAPI-Deadline", "soon"}});
  ASSERT_TRUE(std::holds_alternative<Normalized>(out));
  EXPECT_EQ(std::get<Normalized>(out).client, std::string(64, 'c'));
  EXPECT_FALSE(std::get<Normalized>(out).client_deadline);
}

TEST(Normalize, ClientDeadlineForms) {
  EXPECT_EQ(parseClientDeadline("5s"), std::optional<Duration>(std::chrono::seconds(5)));
  EXPECT_EQ(parseClientDeadline("1.5"), std::optional<Duration>(std::chrono::milliseconds(1500)));
  EXPECT_FALSE(parseClientDeadline(""));
  EXPECT_FALSE(parseClientDeadline("0"));
  EXPECT_FALSE(parseClientDeadline("-3"));
  EXPECT_FALSE(parseClientDeadline("3 s x"));
}

TEST(Normalize, LoopbackNames) {
  EXPECT_TRUE(isLoopbackName("localhost"));
  EXPECT_TRUE(isLoopbackName("::1"));
  EXPECT_TRUE(isLoopbackName("127.0.0.2"));
  EXPECT_FALSE(isLoopbackName("128.0.0.1"));
  EXPECT_FALSE(isLoopbackName("localhost.evil"));
}

}  // namespace
}  // namespace hiapi::core
