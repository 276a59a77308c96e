// Fuzz target for the HTTP/1.1 response parser every client in the tree uses (the upstream
// client on the proxy's hot path first). Beyond "never crash": a reply must mean the same
// whether its bytes come at once or in two pieces split anywhere, since TCP splits them anywhere;
// the first input byte picks the split and whether the request was HEAD.
// Built as a libFuzzer binary with clang (-DHIAPI_FUZZ=ON), and always as a replay test over
// tests/fuzz/corpus/http_response (tests/fuzz/replay_corpus_main.cc).

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "hiapi/http/response_parser.h"

namespace {

struct Outcome {
  hiapi::http::Response reply;
  bool complete = false;
  bool keep_alive = false;
  hiapi::http::ResponseParser::Problem problem{};
};

Outcome parse(const char* data, size_t size, size_t split, bool head) {
  Outcome o;
  hiapi::http::ResponseParser parser({4096, 4096});
  parser.begin(o.reply, head);
  if (parser.feed(data, split)) {
    parser.feed(data + split, size - split);
  }
  parser.finish();
  o.complete = parser.complete();
  o.keep_alive = parser.keepAlive();
  o.problem = parser.problem();
  if (o.complete && (o.reply.status < 100 || o.reply.status > 999)) {
    std::abort();  // a complete reply always has a status llhttp accepted
  }
  if (o.reply.body.size() > 4096) {
    std::abort();  // the limit holds
  }
  (void)parser.describe();
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    return 0;
  }
  const bool head = (data[0] & 0x80) != 0;
  const char* bytes = reinterpret_cast<const char*>(data + 1);
  const size_t n = size - 1;
  const size_t split = n == 0 ? 0 : (data[0] & 0x7f) % (n + 1);
  const Outcome whole = parse(bytes, n, n, head);
  const Outcome pieces = parse(bytes, n, split, head);
  if (whole.complete != pieces.complete || whole.problem != pieces.problem) {
    std::abort();  // the split changed whether the reply is good
  }
  // What a refused reply held when it was refused depends on where the bytes were cut (a header
  // name may have arrived before the bad byte): nobody reads it, so only good replies compare.
  if (whole.complete &&
      (whole.reply.status != pieces.reply.status || whole.reply.body != pieces.reply.body ||
       whole.reply.headers.size() != pieces.reply.headers.size() ||
       whole.keep_alive != pieces.keep_alive)) {
    std::abort();  // the split changed what the reply means
  }
  for (size_t i = 0; whole.complete && i < whole.reply.headers.size(); ++i) {
    if (whole.reply.headers[i].name != pieces.reply.headers[i].name ||
        whole.reply.headers[i].value != pieces.reply.headers[i].value) {
      std::abort();
    }
  }
  return 0;
}
