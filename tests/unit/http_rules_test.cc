// HTTP rules of the core: case folding of header names, hop-by-hop headers (the fixed list,
// Proxy-*, and what a message's Connection header names), Connection tokens; routing,
// absolute-form targets, Bearer tokens and dot segments, row by row.

#include <optional>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "hiapi/core/http_rules.h"

namespace hiapi::core {
namespace {

TEST(HttpRules, IequalsFoldsAsciiOnly) {
  EXPECT_TRUE(iequals("Content-Length", "content-length"));
  EXPECT_TRUE(iequals("X-HIAPI-KEY", "x-hiapi-key"));
  EXPECT_FALSE(iequals("Content-Length", "Content-Lengt"));
  EXPECT_FALSE(iequals("a", "b"));
  EXPECT_TRUE(iequals("", ""));
  // Bytes outside ASCII compare as they are (header names are ASCII tokens).
  EXPECT_FALSE(iequals("\xC3\x89", "\xC3\xA9"));
  EXPECT_FALSE(iequals("[", "{")) << "'[' + 32 is '{': only A-Z fold";
}

TEST(HttpRules, HopByHopFromTheListProxyPrefixAndConnection) {
  for (const char* name : {"Connection", "keep-alive", "TE", "Trailer", "Transfer-Encoding",
                           "Upgrade", "Proxy-Connection", "Proxy-Authorization"}) {
    EXPECT_TRUE(isHopByHop(name, std::string_view())) << name;
  }
  for (const char* name : {"Content-Type", "Authorization", "X-Foo", "Date", "Prox"}) {
    EXPECT_FALSE(isHopByHop(name, std::string_view())) << name;
  }
  // Named by the message's Connection header: with spaces, tabs, any case, several values.
  EXPECT_TRUE(isHopByHop("X-Foo", std::string_view("close, x-foo")));
  EXPECT_TRUE(isHopByHop("x-bar", std::string_view("X-Foo ,\tX-BAR\t")));
  EXPECT_FALSE(isHopByHop("X-Fo", std::string_view("close, x-foo")));
  EXPECT_FALSE(isHopByHop("X-Foo", std::string_view("close,,")));
  // Tokens are matched whole, in any case.
  const std::string_view value = "keep-alive, X-Trace-Hop";
  EXPECT_TRUE(isHopByHop("X-Trace-Hop", value));
  EXPECT_TRUE(isHopByHop("x-trace-hop", value));
  EXPECT_FALSE(isHopByHop("X-Trace", value));
  EXPECT_FALSE(isHopByHop("Content-Type", value));
}

// Every row of the README's routing table, and what is outside it.
TEST(HttpRules, MatchRouteTable) {
  struct Row {
    const char* method;
    const char* path;
    std::optional<RouteKind> kind;  ///< nullopt: outside /v1/ (404 from the proxy)
    const char* task_id;
  };
  const Row rows[] = {
      {"POST", "/v1/tasks", RouteKind::Create, ""},
      {"POST", "/v1/tasks/", RouteKind::Create, ""},
      {"GET", "/v1/tasks", RouteKind::List, ""},
      {"GET", "/v1/tasks/", RouteKind::List, ""},
      {"GET", "/v1/tasks/tk-hiapi-01HZ", RouteKind::Poll, "tk-hiapi-01HZ"},
      {"GET", "/v1/tasks/tk%2D1", RouteKind::Poll, "tk-1"},
      {"GET", "/v1/tasks/a/b", RouteKind::Other, ""},
      {"GET", "/v1/tasks/%zz", RouteKind::Other, ""},
      {"DELETE", "/v1/tasks/tk-1", RouteKind::Other, ""},
      {"PUT", "/v1/tasks", RouteKind::Other, ""},
      {"HEAD", "/v1/tasks", RouteKind::Other, ""},
      {"GET", "/v1/models", RouteKind::Other, ""},
      {"GET", "/v1", RouteKind::Other, ""},
      {"GET", "/v2/tasks", std::nullopt, ""},
      {"GET", "/v1tasks", std::nullopt, ""},
      {"GET", "/metrics", std::nullopt, ""},
      {"GET", "", std::nullopt, ""},
  };
  for (const Row& r : rows) {
    const std::optional<RouteMatch> m = matchRoute(r.method, r.path);
    ASSERT_EQ(m.has_value(), r.kind.has_value()) << r.method << " " << r.path;
    if (m) {
      EXPECT_EQ(m->kind, *r.kind) << r.method << " " << r.path;
      EXPECT_EQ(m->task_id, r.task_id) << r.method << " " << r.path;
    }
  }
}

TEST(HttpRules, ParseAbsoluteUriTable) {
  struct Row {
    const char* target;
    bool absolute;
    const char* scheme;
    const char* host;
    std::optional<uint16_t> port;
    const char* path_and_query;
  };
  const Row rows[] = {
      {"http://127.0.0.1:8080/v1/tasks?page=1", true, "http", "127.0.0.1", 8080,
       "/v1/tasks?page=1"},
      {"HTTP://Api.HiAPI.ai/v1/tasks", true, "http", "api.hiapi.ai", std::nullopt, "/v1/tasks"},
      {"https://host", true, "https", "host", std::nullopt, "/"},
      {"http://host?x=1", true, "http", "host", std::nullopt, "/?x=1"},
      {"http://[::1]:9/v1", true, "http", "::1", 9, "/v1"},
      {"http://[::1]/v1", true, "http", "::1", std::nullopt, "/v1"},
      {"http://user:pw@host:81/", true, "http", "host", 81, "/"},
      {"/v1/tasks", false, "", "", std::nullopt, ""},
      {"", false, "", "", std::nullopt, ""},
      {"://host/", false, "", "", std::nullopt, ""},
      {"http://[::1/v1", false, "", "", std::nullopt, ""},
      {"http://host:0/", false, "", "", std::nullopt, ""},
      {"http://host:65536/", false, "", "", std::nullopt, ""},
      {"http://host:99999999999/", false, "", "", std::nullopt, ""},
      {"http://host:8o/", false, "", "", std::nullopt, ""},
  };
  for (const Row& r : rows) {
    const std::optional<AbsoluteUri> u = parseAbsoluteUri(r.target);
    ASSERT_EQ(u.has_value(), r.absolute) << r.target;
    if (u) {
      EXPECT_EQ(u->scheme, r.scheme) << r.target;
      EXPECT_EQ(u->host, r.host) << r.target;
      EXPECT_EQ(u->port, r.port) << r.target;
      EXPECT_EQ(u->path_and_query, r.path_and_query) << r.target;
    }
  }
}

TEST(HttpRules, BearerTokenTable) {
  const std::pair<const char*, std::optional<std::string>> rows[] = {
      {"Bearer sk-1", "sk-1"},
      {"bearer sk-1", "sk-1"},
      {"BEARER\tsk-1", "sk-1"},
      {"  Bearer   sk-1  ", "sk-1"},
      {"Bearer", std::nullopt},
      {"Bearer ", std::nullopt},
      {"Bearer    ", std::nullopt},
      {"Bearersk-1", std::nullopt},
      {"Basic dXNlcjpwdw==", std::nullopt},
      {"", std::nullopt},
  };
  for (const auto& [value, token] : rows) {
    EXPECT_EQ(bearerToken(value), token) << "[" << value << "]";
  }
}

TEST(HttpRules, DotSegmentsAlsoEncodedOrBehindAnEncodedSeparator) {
  for (const char* p : {"/v1/../metrics", "/v1/./tasks", "/v1/%2e%2e/x", "/v1/%2E/x",
                        "/v1/..%2fmetrics", "/v1\\..\\metrics", "/v1/tasks/..", "/.."}) {
    EXPECT_TRUE(hasDotSegment(p)) << p;
  }
  for (const char* p : {"/v1/tasks", "/v1/tasks/tk.1", "/v1/...", "/v1/.hidden", "/v1/a..b",
                        "/v1/%2e%2e%2e"}) {
    EXPECT_FALSE(hasDotSegment(p)) << p;
  }
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

TEST(PercentEncodeSegment, KeepsUnreservedAndEscapesEveryOtherByteAndRoundTrips) {
  EXPECT_EQ(percentEncodeSegment("tk-hiapi-01HZ_a.b~c"), "tk-hiapi-01HZ_a.b~c");
  EXPECT_EQ(percentEncodeSegment("a/b c?%"), "a%2Fb%20c%3F%25");
  EXPECT_EQ(percentEncodeSegment(std::string("\xff\x00", 2)), "%FF%00");
  const std::string all = [] {
    std::string s;
    for (int c = 0; c < 256; ++c) {
      s.push_back(static_cast<char>(c));
    }
    return s;
  }();
  EXPECT_EQ(percentDecode(percentEncodeSegment(all)), all);
}

}  // namespace
}  // namespace hiapi::core
