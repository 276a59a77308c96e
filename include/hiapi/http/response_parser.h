#pragma once
// An incremental HTTP/1.1 response parser on llhttp (nodejs's parser): bytes in as they arrive,
// one final response out. The upstream client's hot path and every test or tool client use it,
// so a reply means the same thing to all of them.
//
// What it refuses, and why: a header section or body over its limits (memory is bounded per
// connection), and a folded header line (obs-fold: RFC 9112 §5.2 lets a proxy refuse it, and the
// sender meant something by it that a client would not see). Interim replies (1xx but 101) are
// skipped; a reply to HEAD has no body whatever its Content-Length says; parsing stops right
// after the final reply, and bytes behind it mark the connection as out of step.

#include <cstddef>
#include <string>

#include <llhttp.h>

#include "hiapi/http/message.h"

namespace hiapi::http {

class ResponseParser {
public:
  struct Limits {
    size_t max_header_bytes = 256 * 1024;  ///< names and values of the header section
    size_t max_body_bytes = 64 * 1024 * 1024;
  };
  enum class Problem {
    None,
    HeadersTooLarge,  ///< the header section went over Limits::max_header_bytes
    BodyTooLarge,     ///< the body went over Limits::max_body_bytes
    ObsFold,          ///< a folded header line
    Invalid,          ///< llhttp refused the bytes (reason())
    Incomplete,       ///< the connection ended before the reply did (after finish())
  };

  ResponseParser();
  explicit ResponseParser(Limits limits);
  ResponseParser(const ResponseParser&) = delete;
  ResponseParser& operator=(const ResponseParser&) = delete;

  /// Starts a new reply, written into @p into (status 0, headers and body cleared, their
  /// capacity kept; the status is set once the final reply's head is parsed). @p into must outlive the exchange. @p head: the request was HEAD.
  void begin(Response& into, bool head);

  /// Parses the next bytes. @return false when reading should stop: the reply is complete and
  /// more bytes came (trailing()), or it cannot be parsed (problem()). @p used, when given, gets
  /// how many of the bytes belong to this reply (the rest is the start of another).
  bool feed(const char* data, size_t len, size_t* used = nullptr);

  /// The connection ended (EOF): ends a body delimited by the close. A reply that is not
  /// complete by then gets Problem::Incomplete (when any byte came) or stays empty.
  void finish();

  bool complete() const { return complete_; }
  /// Bytes, or a second reply, came after the complete one.
  bool trailing() const { return trailing_; }
  /// The complete reply lets another request follow on the connection.
  bool keepAlive() const { return keep_alive_; }
  /// Some reply byte arrived (interim replies included).
  bool gotBytes() const { return got_bytes_; }
  Problem problem() const { return problem_; }
  /// @return a sentence describing problem() ("" when there is none).
  std::string describe() const;
  const Limits& limits() const { return limits_; }

private:
  static int onMessageBegin(llhttp_t* p);
  static int onHeaderField(llhttp_t* p, const char* at, size_t len);
  static int onHeaderValue(llhttp_t* p, const char* at, size_t len);
  static int onHeadersComplete(llhttp_t* p);
  static int onBody(llhttp_t* p, const char* at, size_t len);
  static int onMessageComplete(llhttp_t* p);
  static const llhttp_settings_t& settings();

  Limits limits_;
  llhttp_t parser_{};
  Response* reply_ = nullptr;
  size_t header_bytes_ = 0;
  const char* chunk_begin_ = nullptr;  ///< the bytes llhttp parses now...
  char chunk_prev_last_ = 0;           ///< ...and the last byte of the ones before
  bool head_ = false;
  bool got_bytes_ = false;
  bool header_value_ = false;  ///< the last header callback was for a value
  bool complete_ = false;
  bool keep_alive_ = false;
  bool trailing_ = false;
  Problem problem_ = Problem::None;
  const char* invalid_reason_ = nullptr;  ///< why the proxy itself refused the bytes (Invalid)
};

}  // namespace hiapi::http
