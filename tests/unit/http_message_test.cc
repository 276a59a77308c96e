// The one HTTP/1.1 response parser and request writer every client in the tree uses: framing,
// limits, refusals, and that a reply means the same whichever way its bytes are split.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "hiapi/http/message.h"
#include "hiapi/http/response_parser.h"

namespace hiapi::http {
namespace {

using Problem = ResponseParser::Problem;

struct Parsed {
  Response reply;
  bool complete = false;
  bool keep_alive = false;
  bool trailing = false;
  Problem problem = Problem::None;
};

// Feeds @p bytes in pieces of @p piece bytes (0 = all at once), then EOF when @p eof.
Parsed parse(const std::string& bytes, size_t piece = 0, bool eof = false, bool head = false,
             ResponseParser::Limits limits = {}) {
  Parsed p;
  ResponseParser parser(limits);
  parser.begin(p.reply, head);
  const size_t step = piece == 0 ? bytes.size() : piece;
  for (size_t off = 0; off < bytes.size(); off += step) {
    if (!parser.feed(bytes.data() + off, std::min(step, bytes.size() - off))) {
      break;
    }
  }
  if (eof) {
    parser.finish();
  }
  p.complete = parser.complete();
  p.keep_alive = parser.keepAlive();
  p.trailing = parser.trailing();
  p.problem = parser.problem();
  return p;
}

struct Case {
  const char* name;
  std::string bytes;
  bool eof;
  bool head;
  bool complete;
  int status;
  std::string body;
  bool keep_alive;
  Problem problem;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {"content_length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello", false,
       false, true, 200, "hello", true, Problem::None},
      {"chunked", "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
       false, false, true, 201, "abcde", true, Problem::None},
      {"chunked_with_trailer",
       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nT: 1\r\n\r\n", false,
       false, true, 200, "x", true, Problem::None},
      {"close_delimited", "HTTP/1.1 200 OK\r\n\r\nall of it", true, false, true, 200, "all of it",
       false, Problem::None},
      {"connection_close", "HTTP/1.1 429 Too Many\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
       false, false, true, 429, "{}", false, Problem::None},
      {"http10", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false, false, true, 200, "x",
       false, Problem::None},
      {"interim_then_final", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
       false, false, true, 200, "ok", true, Problem::None},
      {"head_ignores_length", "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", false, true, true,
       200, "", true, Problem::None},
      {"no_content_204", "HTTP/1.1 204 No Content\r\n\r\n", false, false, true, 204, "", true,
       Problem::None},
      {"cut_body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true, false, false, 200,
       "abc", false, Problem::Incomplete},
      {"cut_head", "HTTP/1.1 200 OK\r\nContent-Le", true, false, false, 0, "", false,
       Problem::Incomplete},
      {"not_http", "SSH-2.0-OpenSSH\r\n\r\n", false, false, false, 0, "", false, Problem::Invalid},
      // Found by the fuzzer: llhttp takes a one-digit status; no client could use it.
      {"one_digit_status", "HTTP/1.1 2 OK\r\nContent-Length: 0\r\n\r\n", false, false, false, 0,
       "", false, Problem::Invalid},
      {"obs_fold", "HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n", false, false,
       false, 0, "", false, Problem::ObsFold},
  };
  return c;
}

TEST(ResponseParser, EveryCaseMeansTheSameWhateverTheSplit) {
  for (const Case& c : cases()) {
    for (size_t piece : {size_t{0}, size_t{1}, size_t{2}, size_t{7}}) {
      SCOPED_TRACE(std::string(c.name) + " in pieces of " + std::to_string(piece));
      const Parsed p = parse(c.bytes, piece, c.eof, c.head);
      EXPECT_EQ(p.complete, c.complete);
      EXPECT_EQ(p.reply.status, c.status);
      EXPECT_EQ(p.reply.body, c.body);
      EXPECT_EQ(p.problem, c.problem);
      if (c.complete) {
        EXPECT_EQ(p.keep_alive, c.keep_alive);
        EXPECT_FALSE(p.trailing);
      }
    }
  }
}

TEST(ResponseParser, KeepsHeadersInOrderAndFindsThemByAnyCase) {
  const Parsed p = parse("HTTP/1.1 200 OK\r\nRetry-After: 3\r\nX-B: 1\r\nx-b: 2\r\nContent-Length: 0\r\n\r\n");
  ASSERT_TRUE(p.complete);
  ASSERT_EQ(p.reply.headers.size(), 4u);
  EXPECT_EQ(p.reply.headers[0].name, "Retry-After");
  ASSERT_NE(findHeader(p.reply.headers, "retry-after"), nullptr);
  EXPECT_EQ(*findHeader(p.reply.headers, "RETRY-AFTER"), "3");
  EXPECT_EQ(*findHeader(p.reply.headers, "X-B"), "1") << "the first of repeated headers";
  EXPECT_EQ(findHeader(p.reply.headers, "X-C"), nullptr);
}

TEST(ResponseParser, BytesAfterTheReplyAreTrailingAndNotConsumed) {
  const std::string first = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  const std::string bytes = first + "HTTP/1.1 200 OK\r\n";
  Response reply;
  ResponseParser parser;
  parser.begin(reply, false);
  size_t used = 0;
  EXPECT_FALSE(parser.feed(bytes.data(), bytes.size(), &used));
  EXPECT_TRUE(parser.complete());
  EXPECT_TRUE(parser.trailing());
  EXPECT_EQ(used, first.size());
  EXPECT_EQ(reply.body, "ok");
  // Reused for the next reply on the same connection: starts clean.
  parser.begin(reply, false);
  EXPECT_EQ(reply.status, 0);
  EXPECT_FALSE(parser.complete());
  EXPECT_FALSE(parser.trailing());
}

TEST(ResponseParser, RefusesWhatIsOverItsLimits) {
  ResponseParser::Limits small{64, 8};
  EXPECT_EQ(parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n123456789", 0, false, false, small)
                .problem,
            Problem::BodyTooLarge)
      << "declared";
  EXPECT_EQ(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n123456789\r\n0\r\n\r\n", 3,
                  false, false, small)
                .problem,
            Problem::BodyTooLarge)
      << "streamed";
  EXPECT_EQ(parse("HTTP/1.1 200 OK\r\nX-Long: " + std::string(100, 'a') + "\r\n\r\n", 5, false,
                  false, small)
                .problem,
            Problem::HeadersTooLarge);
  ResponseParser parser(small);
  Response reply;
  parser.begin(reply, false);
  const std::string big = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
  parser.feed(big.data(), big.size());
  EXPECT_EQ(parser.describe(), "reply body larger than 8 bytes");
}

TEST(WriteRequest, FramesTheBodyAndDropsSmugglingHeadersWhenAsked) {
  std::string out;
  writeRequest(out, "POST", "/v1/tasks", "api.example:443", {{"A", "b"}}, "");
  EXPECT_EQ(out, "POST /v1/tasks HTTP/1.1\r\nHost: api.example:443\r\nA: b\r\nContent-Length: 0\r\n\r\n")
      << "POST states its length even when empty";
  writeRequest(out, "GET", "/v1/tasks/tk-1", "h", {}, "");
  EXPECT_EQ(out, "GET /v1/tasks/tk-1 HTTP/1.1\r\nHost: h\r\n\r\n");
  writeRequest(out, "PUT", "/x", "h", {{"content-length", "3"}}, "abc");
  EXPECT_EQ(out, "PUT /x HTTP/1.1\r\nHost: h\r\ncontent-length: 3\r\n\r\nabc")
      << "a stated length is not stated twice";
  const Headers smuggling{{"X-A", "1\r\nX-Evil: 1"}, {"X-B", "folded\r\n ok"}, {"Bad\nName", "v"},
                          {"X-C", std::string("nul\0", 4)}};
  writeRequest(out, "GET", "/", "h", smuggling, "");
  EXPECT_EQ(out, "GET / HTTP/1.1\r\nHost: h\r\nX-B: folded\r\n ok\r\n\r\n");
  writeRequest(out, "GET", "/", "h", {{"X-A", "1\r\nX-Evil: 1"}}, "", UnsafeHeaders::Keep);
  EXPECT_EQ(out, "GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-Evil: 1\r\n\r\n")
      << "a test that means to send bad bytes can";
}

}  // namespace
}  // namespace hiapi::http
