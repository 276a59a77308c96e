// HTTP rules of the core: case folding of header names, hop-by-hop headers (the fixed list,
// Proxy-*, and what a message's Connection header names), Connection tokens.

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
