#include "hiapi/http/response_parser.h"

namespace hiapi::http {

namespace {

bool isInterim(unsigned status) { return status >= 100 && status < 200 && status != 101; }

// Most replies carry fewer headers than this: reserving it once makes one allocation, not four.
constexpr size_t kUsualHeaders = 16;

ResponseParser& parserOf(llhttp_t* p) { return *static_cast<ResponseParser*>(p->data); }

}  // namespace

ResponseParser::ResponseParser() : ResponseParser(Limits{}) {}

ResponseParser::ResponseParser(Limits limits) : limits_(limits) {}

const llhttp_settings_t& ResponseParser::settings() {
  static const llhttp_settings_t s = [] {
    llhttp_settings_t x;
    llhttp_settings_init(&x);
    x.on_message_begin = &ResponseParser::onMessageBegin;
    x.on_header_field = &ResponseParser::onHeaderField;
    x.on_header_value = &ResponseParser::onHeaderValue;
    x.on_headers_complete = &ResponseParser::onHeadersComplete;
    x.on_body = &ResponseParser::onBody;
    x.on_message_complete = &ResponseParser::onMessageComplete;
    return x;
  }();
  return s;
}

void ResponseParser::begin(Response& into, bool head) {
  reply_ = &into;
  into.status = 0;
  into.headers.clear();
  into.body.clear();
  llhttp_init(&parser_, HTTP_RESPONSE, &settings());
  parser_.data = this;
  header_bytes_ = 0;
  chunk_begin_ = nullptr;
  chunk_prev_last_ = 0;
  head_ = head;
  got_bytes_ = false;
  header_value_ = false;
  complete_ = false;
  keep_alive_ = false;
  trailing_ = false;
  problem_ = Problem::None;
  invalid_reason_ = nullptr;
}

bool ResponseParser::feed(const char* data, size_t len, size_t* used) {
  if (used != nullptr) {
    *used = 0;
  }
  if (problem_ != Problem::None) {
    return false;
  }
  got_bytes_ = got_bytes_ || len > 0;
  if (complete_) {
    trailing_ = trailing_ || len > 0;  // bytes after the reply: the connection is out of step
    return len == 0;
  }
  chunk_begin_ = data;
  const llhttp_errno_t err = llhttp_execute(&parser_, data, len);
  chunk_prev_last_ = len > 0 ? data[len - 1] : chunk_prev_last_;
  if (used != nullptr) {
    *used = err == HPE_PAUSED ? static_cast<size_t>(llhttp_get_error_pos(&parser_) - data) : len;
  }
  if (complete_) {  // the parser paused right after the final reply
    if (err == HPE_PAUSED && llhttp_get_error_pos(&parser_) < data + len) {
      trailing_ = true;
      return false;
    }
    return true;
  }
  if (err != HPE_OK) {
    if (problem_ == Problem::None) {
      problem_ = Problem::Invalid;
    }
    return false;
  }
  return true;
}

void ResponseParser::finish() {
  if (!got_bytes_ || complete_ || problem_ != Problem::None) {
    return;
  }
  // Ends a body delimited by the close; an error in any other state (a cut reply).
  llhttp_finish(&parser_);
  if (!complete_ && problem_ == Problem::None) {
    problem_ = Problem::Incomplete;
  }
}

std::string ResponseParser::describe() const {
  switch (problem_) {
  case Problem::None:
    return {};
  case Problem::HeadersTooLarge:
    return "reply headers larger than " + std::to_string(limits_.max_header_bytes) + " bytes";
  case Problem::BodyTooLarge:
    return "reply body larger than " + std::to_string(limits_.max_body_bytes) + " bytes";
  case Problem::ObsFold:
    return "a folded header line (obs-fold)";
  case Problem::Invalid: {
    if (invalid_reason_ != nullptr) {
      return invalid_reason_;
    }
    const char* reason = llhttp_get_error_reason(&parser_);
    return reason != nullptr ? reason : llhttp_errno_name(llhttp_get_errno(&parser_));
  }
  case Problem::Incomplete:
    return "the connection closed before the reply was complete";
  }
  return {};
}

// ---- llhttp callbacks ---------------------------------------------------------------------------

int ResponseParser::onMessageBegin(llhttp_t* p) {
  ResponseParser& c = parserOf(p);
  // A final reply after an interim one starts from scratch.
  c.reply_->headers.clear();
  c.reply_->headers.reserve(kUsualHeaders);
  c.reply_->body.clear();
  c.header_value_ = false;
  return 0;
}

int ResponseParser::onHeaderField(llhttp_t* p, const char* at, size_t len) {
  ResponseParser& c = parserOf(p);
  // A name may come in pieces (split across reads): a new header starts after a value.
  if (c.header_value_ || c.reply_->headers.empty()) {
    c.reply_->headers.emplace_back();
    c.header_value_ = false;
  }
  c.header_bytes_ += len;
  if (c.header_bytes_ > c.limits_.max_header_bytes) {
    c.problem_ = Problem::HeadersTooLarge;
    return -1;
  }
  c.reply_->headers.back().name.append(at, len);
  return 0;
}

int ResponseParser::onHeaderValue(llhttp_t* p, const char* at, size_t len) {
  ResponseParser& c = parserOf(p);
  c.header_value_ = true;
  c.header_bytes_ += len;
  if (c.header_bytes_ > c.limits_.max_header_bytes) {
    c.problem_ = Problem::HeadersTooLarge;
    return -1;
  }
  // A value span right after a line feed continues a folded line, which llhttp would join to
  // the value: refused (see the header).
  const char before = at > c.chunk_begin_ ? at[-1] : c.chunk_prev_last_;
  if (before == '\n') {
    c.problem_ = Problem::ObsFold;
    return -1;
  }
  if (!c.reply_->headers.empty()) {
    c.reply_->headers.back().value.append(at, len);
  }
  return 0;
}

int ResponseParser::onHeadersComplete(llhttp_t* p) {
  ResponseParser& c = parserOf(p);
  // RFC 9110 §15: three digits. llhttp takes fewer ("HTTP/1.1 2 OK"), which no client of the
  // proxy could make sense of.
  if (p->status_code < 100 || p->status_code > 999) {
    c.problem_ = Problem::Invalid;
    c.invalid_reason_ = "a status code that is not three digits";
    return -1;
  }
  if (isInterim(p->status_code)) {
    return 1;  // no body; the final reply follows
  }
  c.reply_->status = static_cast<int>(p->status_code);  // known now, whatever the body does
  if (c.head_) {
    return 1;  // a reply to HEAD has no body, whatever its Content-Length says
  }
  if ((p->flags & F_CONTENT_LENGTH) != 0) {
    if (p->content_length > c.limits_.max_body_bytes) {
      c.problem_ = Problem::BodyTooLarge;
      return -1;
    }
    c.reply_->body.reserve(static_cast<size_t>(p->content_length));
  }
  return 0;
}

int ResponseParser::onBody(llhttp_t* p, const char* at, size_t len) {
  ResponseParser& c = parserOf(p);
  if (c.reply_->body.size() + len > c.limits_.max_body_bytes) {
    c.problem_ = Problem::BodyTooLarge;
    return -1;
  }
  c.reply_->body.append(at, len);
  return 0;
}

int ResponseParser::onMessageComplete(llhttp_t* p) {
  ResponseParser& c = parserOf(p);
  if (isInterim(p->status_code)) {
    return 0;  // 100 Continue and friends: read on
  }
  c.reply_->status = static_cast<int>(p->status_code);
  c.complete_ = true;
  // Connection: close, HTTP/1.0 without keep-alive and close-delimited bodies end the
  // connection; so does a protocol switch.
  c.keep_alive_ = llhttp_should_keep_alive(p) != 0 && p->status_code != 101 && p->upgrade == 0;
  // Stop right after this reply: anything behind it is not an answer to anything sent.
  return HPE_PAUSED;
}

}  // namespace hiapi::http
