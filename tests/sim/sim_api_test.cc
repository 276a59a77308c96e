// hiapi-sim over real loopback sockets: the binary is started on port 0 as a child process and
// driven with the blocking test client. Every loop is bounded in count and time; nothing asserts
// wall-clock durations.

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <rapidjson/document.h>
#include <rapidjson/pointer.h>
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "callback_receiver.h"
#include "http_client.h"
#include "sim_process.h"

namespace hiapi::test {
namespace {

using Clock = std::chrono::steady_clock;

rapidjson::Document parseJson(const std::string& text) {
  rapidjson::Document d;
  d.Parse(text.data(), text.size());
  return d;
}

// Number at a JSON pointer, or -1 when absent / not a number.
int64_t num(const rapidjson::Value& doc, const char* pointer) {
  const rapidjson::Value* v = rapidjson::Pointer(pointer).Get(doc);
  if (v == nullptr || !v->IsNumber()) {
    return -1;
  }
  return v->IsInt64() ? v->GetInt64() : static_cast<int64_t>(v->GetDouble());
}

// String at a JSON pointer, or "<absent>".
std::string str(const rapidjson::Value& doc, const char* pointer) {
  const rapidjson::Value* v = rapidjson::Pointer(pointer).Get(doc);
  return v != nullptr && v->IsString() ? std::string(v->GetString(), v->GetStringLength())
                                       : "<absent>";
}

bool has(const rapidjson::Value& doc, const char* pointer) {
  return rapidjson::Pointer(pointer).Get(doc) != nullptr;
}

std::string hmacHex(const std::string& key, const std::string& msg) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, &len);
  std::string out;
  char buf[3];
  for (unsigned int i = 0; i < len; ++i) {
    std::snprintf(buf, sizeof buf, "%02x", mac[i]);
    out += buf;
  }
  return out;
}

std::string createBody(const std::string& model, const std::string& prompt,
                       const std::string& extra = "") {
  return "{\"model\":\"" + model + "\",\"input\":{\"prompt\":\"" + prompt + "\"}" + extra + "}";
}

bool allDigits(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

// A positive integer without leading zeros (Retry-After in seconds).
bool isPositiveInteger(const std::string& s) { return allDigits(s) && s[0] != '0'; }

// "12.345": decimal seconds with three decimals.
bool isDecimal3(const std::string& s) {
  size_t dot = s.find('.');
  return dot != std::string::npos && allDigits(s.substr(0, dot)) && s.size() - dot - 1 == 3 &&
         allDigits(s.substr(dot + 1));
}

// "tk-hiapi-" + 26 Crockford base32 characters.
bool isTaskId(const std::string& s) {
  const std::string prefix = "tk-hiapi-";
  return s.size() == prefix.size() + 26 && s.rfind(prefix, 0) == 0 &&
         s.find_first_not_of("0123456789ABCDEFGHJKMNPQRSTVWXYZ", prefix.size()) ==
             std::string::npos;
}

class SimTest : public ::testing::Test {
protected:
  void startSim(const std::vector<std::string>& args) {
    std::string err;
    sim_ = SimProcess::start(args, &err);
    ASSERT_TRUE(sim_ != nullptr) << err;
  }

  void TearDown() override {
    if (sim_ != nullptr) {
      EXPECT_EQ(sim_->stop(), 0) << sim_->stderrText();
    }
  }

  HttpClient::Options opts(bool keep_alive = false) const {
    HttpClient::Options o;
    o.port = sim_->port();
    o.keep_alive = keep_alive;
    return o;
  }

  HttpResponse call(const std::string& method, const std::string& target, const std::string& key,
                    const std::string& body = "", HeaderList extra = {}) {
    HttpClient c(opts());
    HeaderList h = key.empty() ? HeaderList{} : authHeaders(key);
    h.insert(h.end(), extra.begin(), extra.end());
    return c.request(method, target, h, body);
  }

  // Creates a task and returns its id ("" on failure, with a test failure recorded).
  std::string create(const std::string& key, const std::string& body, HeaderList extra = {}) {
    HttpResponse r = call("POST", "/v1/tasks", key, body, std::move(extra));
    EXPECT_EQ(r.status, 200) << r.error << r.body;
    auto d = parseJson(r.body);
    std::string id = str(d, "/data/taskId");
    EXPECT_TRUE(isTaskId(id)) << id;
    return id;
  }

  rapidjson::Document stats() {
    HttpResponse r = call("GET", "/__stats", "");
    EXPECT_EQ(r.status, 200) << r.error;
    return parseJson(r.body);
  }

  // Polls a task until it is terminal; returns the distinct statuses in order, *last the data.
  std::vector<std::string> pollUntilTerminal(const std::string& key, const std::string& id,
                                             rapidjson::Document* last) {
    std::vector<std::string> seen;
    HttpClient c(opts(true));
    auto deadline = Clock::now() + std::chrono::seconds(15);
    for (int i = 0; i < 2000 && Clock::now() < deadline; ++i) {
      HttpResponse r = c.request("GET", "/v1/tasks/" + id, authHeaders(key));
      if (r.status == 200) {
        auto d = parseJson(r.body);
        std::string st = str(d, "/data/status");
        if (seen.empty() || seen.back() != st) {
          seen.push_back(st);
        }
        if (st == "success" || st == "fail") {
          last->CopyFrom(d, last->GetAllocator());
          return seen;
        }
        EXPECT_EQ(num(d, "/data/completed"), 0) << "completed must be 0 until terminal";
        EXPECT_EQ(rapidjson::Pointer("/data/output").Get(d)->Size(), 0u);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // poll interval
    }
    ADD_FAILURE() << "task " << id << " never became terminal";
    return seen;
  }

  // Polls /__stats until `pointer` reaches `want` (bounded). @return the last stats.
  rapidjson::Document waitStat(const char* pointer, int64_t want) {
    rapidjson::Document s;
    auto deadline = Clock::now() + std::chrono::seconds(15);
    for (int i = 0; i < 2000 && Clock::now() < deadline; ++i) {
      s = stats();
      if (num(s, pointer) == want) {
        return s;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << pointer << " never reached " << want;
    return s;
  }

  std::unique_ptr<SimProcess> sim_;
};

// Only the statuses of the schedule, in order.
void expectOrderedSchedule(const std::vector<std::string>& seen, const std::string& terminal) {
  const std::vector<std::string> order = {"queued", "handling", "archiving", terminal};
  size_t at = 0;
  for (const auto& s : seen) {
    while (at < order.size() && order[at] != s) {
      ++at;
    }
    ASSERT_LT(at, order.size()) << "unexpected or out-of-order status " << s;
  }
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back(), terminal);
}

TEST_F(SimTest, PrintsAndWritesItsPortAndExitsZeroOnSigint) {
  ASSERT_NO_FATAL_FAILURE(startSim({}));
  EXPECT_EQ(sim_->stdoutText(),
            "hiapi-sim listening on 127.0.0.1:" + std::to_string(sim_->port()) + "\n");
  EXPECT_EQ(call("GET", "/__stats", "").status, 200);
  ASSERT_EQ(kill(sim_->pid(), SIGINT), 0);
  EXPECT_EQ(sim_->stop(), 0);
}

TEST_F(SimTest, HelpDocumentsFlagsAndNonLoopbackIsRefused) {
  FILE* p = popen((std::string(HIAPI_SIM_BIN) + " --help").c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string help;
  char buf[4096];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) {
    help.append(buf, n);
  }
  EXPECT_EQ(pclose(p), 0);
  for (const char* flag :
       {"--rate", "--burst", "--heavy-max", "--light-max", "--heavy-duration", "--light-duration",
        "--duration-jitter", "--fail-ratio", "--envelope", "--retry-after-ratio",
        "--retry-after-format", "--ratelimit-headers", "--keys", "--fault-5xx", "--fault-reset",
        "--latency", "--latency-jitter", "--stall-ratio", "--stall-time", "--seed", "--port",
        "--port-file", "--listen", "--tls-cert", "--tls-key", "--callback-secret",
        "--create-delay", "--count-rejected", "--max-body", "--limiter", "--window", "--jitter",
        "--duration-dist", "--duration-sigma"}) {
    EXPECT_NE(help.find(flag), std::string::npos) << flag;
  }
  std::string err;
  auto bad = SimProcess::start({"--listen", "0.0.0.0"}, &err);
  EXPECT_EQ(bad, nullptr);
  EXPECT_NE(err.find("non-loopback"), std::string::npos) << err;
}

TEST_F(SimTest, LifecycleToSuccess) {
  ASSERT_NO_FATAL_FAILURE(
      startSim({"--rate", "0", "--light-duration", "300ms", "--duration-jitter", "0"}));
  std::string id =
      create("sk-a", createBody("gpt-image-2", "a red fox", ",\"storage\":\"temp\""));
  rapidjson::Document last;
  auto seen = pollUntilTerminal("sk-a", id, &last);
  expectOrderedSchedule(seen, "success");
  EXPECT_EQ(str(last, "/data/taskId"), id);
  EXPECT_EQ(str(last, "/data/model"), "gpt-image-2");
  EXPECT_EQ(str(last, "/data/storage"), "temp");
  EXPECT_FALSE(has(last, "/data/route"));
  EXPECT_GT(num(last, "/data/completed"), 0);
  EXPECT_GE(num(last, "/data/completed"), num(last, "/data/created"));
  EXPECT_EQ(str(last, "/data/output/0/type"), "image");
  EXPECT_NE(str(last, "/data/output/0/url").find(id), std::string::npos);
  EXPECT_GT(num(last, "/data/output/0/expireAt"), num(last, "/data/completed"));
  EXPECT_TRUE(rapidjson::Pointer("/data/error").Get(last)->IsNull());

  HttpResponse list = call("GET", "/v1/tasks?page=1&size=10", "sk-a");
  ASSERT_EQ(list.status, 200);
  auto l = parseJson(list.body);
  EXPECT_EQ(num(l, "/data/total"), 1);
  EXPECT_EQ(str(l, "/data/items/0/taskId"), id);
  EXPECT_EQ(num(parseJson(call("GET", "/v1/tasks?page=2&size=10", "sk-a").body), "/data/total"), 1);
}

// --verbose is how a benchmark run is traced: each request, then its reply's status, task id,
// model and task status, every line stamped with the seconds since start; never the key.
TEST_F(SimTest, VerboseTracesEachRequestAndItsReplyWithoutTheKey) {
  ASSERT_NO_FATAL_FAILURE(startSim(
      {"--rate", "0", "--light-duration", "200ms", "--duration-jitter", "0", "--verbose"}));
  const std::string id = create("sk-verbose-secret", createBody("gpt-image-2", "a trace"));
  rapidjson::Document last;
  pollUntilTerminal("sk-verbose-secret", id, &last);
  ASSERT_EQ(sim_->stop(), 0);
  const std::string err = sim_->stderrText();
  sim_.reset();

  std::vector<std::string> lines;
  for (size_t at = 0, nl; at < err.size(); at = nl + 1) {
    nl = err.find('\n', at);
    if (nl == std::string::npos) {
      nl = err.size();
    }
    const std::string line = err.substr(at, nl - at);
    if (line.rfind("hiapi-sim: ", 0) == 0 && line.size() > 11 &&
        std::isdigit(static_cast<unsigned char>(line[11]))) {
      lines.push_back(line.substr(11));
    }
  }
  // "<secs> POST /v1/tasks", "<secs> -> 200 <id>", then "<secs> GET /v1/tasks/<id>",
  // "<secs> -> 200 <id> gpt-image-2 <status>" for each poll.
  ASSERT_GE(lines.size(), 4u) << err;
  auto fields = [](const std::string& line) {
    std::vector<std::string> f;
    for (size_t at = 0; at < line.size();) {
      const size_t sp = std::min(line.find(' ', at), line.size());
      f.push_back(line.substr(at, sp - at));
      at = sp + 1;
    }
    return f;
  };
  const std::vector<std::string> req = fields(lines[0]);
  const std::vector<std::string> rep = fields(lines[1]);
  ASSERT_EQ(req.size(), 3u) << lines[0];
  EXPECT_TRUE(isDecimal3(req[0])) << lines[0];
  EXPECT_EQ(req[1], "POST");
  EXPECT_EQ(req[2], "/v1/tasks");
  ASSERT_GE(rep.size(), 4u) << lines[1];  // a create's reply carries only the task id
  EXPECT_EQ(rep[1], "->");
  EXPECT_EQ(rep[2], "200");
  EXPECT_EQ(rep[3], id);
  EXPECT_GE(std::stod(rep[0]), std::stod(req[0]));
  const std::vector<std::string> final_reply = fields(lines.back());
  ASSERT_EQ(final_reply.size(), 6u) << lines.back();
  EXPECT_EQ(final_reply[2], "200");
  EXPECT_EQ(final_reply[3], id);
  EXPECT_EQ(final_reply[4], "gpt-image-2");
  EXPECT_EQ(final_reply[5], "success");
  EXPECT_EQ(fields(lines[lines.size() - 2])[2], "/v1/tasks/" + id);
  EXPECT_EQ(err.find("sk-verbose-secret"), std::string::npos) << "the key reached the trace";
}

TEST_F(SimTest, LifecycleToFailWithProRoute) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--heavy-duration", "200ms", "--fail-ratio",
                                    "1", "--duration-jitter", "0"}));
  std::string id = create("sk-a", createBody("gpt-image-2", "p", ",\"route\":\"pro\""));
  rapidjson::Document last;
  expectOrderedSchedule(pollUntilTerminal("sk-a", id, &last), "fail");
  EXPECT_EQ(str(last, "/data/model"), "gpt-image-2@pro");
  EXPECT_EQ(str(last, "/data/route"), "pro");
  EXPECT_NE(str(last, "/data/error/code"), "<absent>");
  EXPECT_NE(str(last, "/data/error/message"), "<absent>");
  EXPECT_EQ(rapidjson::Pointer("/data/output").Get(last)->Size(), 0u);
  auto s = stats();
  EXPECT_EQ(str(s, "/tasks/0/tier"), "heavy");
  EXPECT_EQ(str(s, "/tasks/0/status"), "fail");
  EXPECT_GE(num(s, "/tasks/0/terminal_ms"), num(s, "/tasks/0/created_ms"));
}

TEST_F(SimTest, BurstOverRateGets429DocsEnvelopeWithIntegerRetryAfter) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "1/m", "--burst", "3", "--envelope", "docs",
                                    "--retry-after-ratio", "1", "--retry-after-format", "seconds",
                                    "--ratelimit-headers"}));
  HttpClient c(opts(true));
  int ok = 0, limited = 0;
  for (int i = 0; i < 10; ++i) {
    HttpResponse r = c.request("GET", "/v1/tasks", authHeaders("sk-a"));
    ASSERT_TRUE(r.ok()) << r.error;
    EXPECT_EQ(r.header("X-RateLimit-Limit"), "3");
    if (r.status == 200) {
      ++ok;
      continue;
    }
    ASSERT_EQ(r.status, 429);
    ++limited;
    auto d = parseJson(r.body);
    EXPECT_EQ(num(d, "/code"), 429);
    EXPECT_EQ(str(d, "/error_code"), "RATE_LIMIT_EXCEEDED");
    EXPECT_TRUE(rapidjson::Pointer("/data").Get(d)->IsNull());
    EXPECT_FALSE(has(d, "/error"));  // docs form only
    EXPECT_TRUE(isPositiveInteger(r.header("Retry-After")))
        << r.header("Retry-After");
    EXPECT_EQ(r.header("X-RateLimit-Remaining"), "0");
  }
  EXPECT_EQ(ok, 3);  // the bucket starts full; a refill takes a minute
  EXPECT_EQ(limited, 7);
  auto s = stats();
  EXPECT_EQ(num(s, "/rejected_429/rate"), 7);
  EXPECT_EQ(num(s, "/rejected_429/with_retry_after"), 7);
  EXPECT_EQ(num(s, "/keys/sk-a/admitted"), 3);
  EXPECT_GE(num(s, "/keys/sk-a/max_admitted_1s"), 1);
  EXPECT_LE(num(s, "/keys/sk-a/max_admitted_1s"), 3);
}

TEST_F(SimTest, RetryAfterShareGuideEnvelopeDateAndDecimalFormats) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "1/h", "--burst", "1", "--envelope", "guide",
                                    "--retry-after-ratio", "0.5", "--retry-after-format", "date",
                                    "--seed", "3"}));
  HttpClient c(opts(true));
  ASSERT_EQ(c.request("GET", "/v1/tasks", authHeaders("sk-a")).status, 200);
  const int kN = 200;
  int with = 0;
  for (int i = 0; i < kN; ++i) {
    HttpResponse r = c.request("GET", "/v1/tasks", authHeaders("sk-a"));
    ASSERT_EQ(r.status, 429) << r.error;
    auto d = parseJson(r.body);
    EXPECT_EQ(str(d, "/error/type"), "hiapi_error");
    EXPECT_EQ(str(d, "/error/code"), "rate_limit_exceeded");
    EXPECT_EQ(str(d, "/error/request_id").rfind("req_", 0), 0u);
    EXPECT_FALSE(has(d, "/error_code"));  // guide form only
    if (r.hasHeader("Retry-After")) {
      ++with;
      struct tm tm {};
      const std::string value = r.header("Retry-After");
      const char* end = strptime(value.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
      EXPECT_TRUE(end != nullptr && *end == '\0') << value;
    }
  }
  EXPECT_NEAR(with, kN / 2, 30);  // 0.5 ± 0.15 (over 4 standard deviations)
  EXPECT_EQ(num(stats(), "/rejected_429/with_retry_after"), with);

  HttpResponse cfg = call("POST", "/__config", "",
                          R"({"retry-after-format":"decimal","retry-after-ratio":1,"envelope":"both"})");
  ASSERT_EQ(cfg.status, 200) << cfg.body;
  HttpResponse r = c.request("GET", "/v1/tasks", authHeaders("sk-a"));
  ASSERT_EQ(r.status, 429);
  EXPECT_TRUE(isDecimal3(r.header("Retry-After")))
      << r.header("Retry-After");
  auto d = parseJson(r.body);
  EXPECT_EQ(str(d, "/error_code"), "RATE_LIMIT_EXCEEDED");
  EXPECT_EQ(str(d, "/error/code"), "rate_limit_exceeded");
}

TEST_F(SimTest, TierCeilingsHoldPerKey) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--heavy-max", "2", "--light-max", "3",
                                    "--heavy-duration", "60s", "--light-duration", "60s"}));
  const std::vector<std::string> heavy = {
      createBody("seedance-2-0", "h1"),
      createBody("gpt-image-2", "h2", ",\"route\":\"pro\""),
      createBody("flux-1.1-pro", "h3"),
      createBody("gpt-image-2.5-flare/text-to-image@pro", "h4"),
      createBody("veo-3.1/fast", "h5"),
      createBody("Nano-Banana-Pro", "h6"),
  };
  int ok = 0, limited = 0;
  for (const auto& b : heavy) {
    HttpResponse r = call("POST", "/v1/tasks", "sk-a", b);
    if (r.status == 200) {
      ++ok;
    } else {
      ASSERT_EQ(r.status, 429) << r.body;
      ++limited;
      auto d = parseJson(r.body);
      EXPECT_EQ(str(d, "/error_code"), "CONCURRENCY_LIMIT_EXCEEDED");
      EXPECT_EQ(str(d, "/error/code"), "concurrency_limit_exceeded");
      EXPECT_TRUE(r.hasHeader("Retry-After"));
    }
  }
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(limited, 4);
  for (int i = 0; i < 4; ++i) {
    HttpResponse r = call("POST", "/v1/tasks", "sk-a", createBody("gpt-image-2", "l"));
    EXPECT_EQ(r.status, i < 3 ? 200 : 429) << i << " " << r.body;
  }
  EXPECT_EQ(call("POST", "/v1/tasks", "sk-b", createBody("kling-3.0-pro", "b")).status, 200);
  auto s = stats();
  EXPECT_EQ(num(s, "/keys/sk-a/max_running/heavy"), 2);
  EXPECT_EQ(num(s, "/keys/sk-a/max_running/light"), 3);
  EXPECT_EQ(num(s, "/keys/sk-a/rejected_concurrency"), 5);
  EXPECT_EQ(num(s, "/tiers/heavy/max_running_per_key"), 2);
  EXPECT_EQ(num(s, "/tiers/heavy/max_running"), 3);  // across both keys
  EXPECT_EQ(num(s, "/tiers/heavy/running"), 3);
  EXPECT_EQ(num(s, "/rejected_429/concurrency"), 5);
  EXPECT_EQ(num(s, "/tasks_created"), 6);
}

TEST_F(SimTest, TierSlotIsFreedAtTerminal) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--heavy-max", "1", "--heavy-duration",
                                    "300ms", "--duration-jitter", "0"}));
  std::string first = create("sk-a", createBody("seedance-2-0", "one"));
  EXPECT_EQ(call("POST", "/v1/tasks", "sk-a", createBody("seedance-2-0", "two")).status, 429);
  rapidjson::Document last;
  pollUntilTerminal("sk-a", first, &last);
  EXPECT_EQ(call("POST", "/v1/tasks", "sk-a", createBody("seedance-2-0", "two")).status, 200);
  EXPECT_EQ(num(stats(), "/keys/sk-a/max_running/heavy"), 1);
}

TEST_F(SimTest, IdempotencyReplayAndMismatch) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0"}));
  std::string body = createBody("gpt-image-2", "idem");
  HeaderList ik = {{"Idempotency-Key", "k-1"}};
  std::string id = create("sk-a", body, ik);
  HttpResponse again = call("POST", "/v1/tasks", "sk-a", body, ik);
  ASSERT_EQ(again.status, 200);
  EXPECT_EQ(str(parseJson(again.body), "/data/taskId"), id);
  EXPECT_EQ(again.header("Idempotent-Replay"), "true");
  // Same JSON meaning, different bytes: the server compares raw bodies.
  HttpResponse mismatch = call("POST", "/v1/tasks", "sk-a", body + " ", ik);
  EXPECT_EQ(mismatch.status, 422);
  EXPECT_EQ(str(parseJson(mismatch.body), "/error_code"), "IDEMPOTENCY_KEY_MISMATCH");
  // Keys are per API key.
  std::string other = create("sk-b", body, ik);
  EXPECT_NE(other, id);
  auto s = stats();
  EXPECT_EQ(num(s, "/tasks_created"), 2);
  EXPECT_EQ(num(s, "/idempotency/replays"), 1);
  EXPECT_EQ(num(s, "/idempotency/mismatches"), 1);
}

TEST_F(SimTest, IdempotencyProcessingGets409WithRetryAfter) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--create-delay", "2s"}));
  std::string body = createBody("gpt-image-2", "slow");
  HeaderList h = authHeaders("sk-a");
  h.emplace_back("Idempotency-Key", "k-slow");
  HttpClient first(opts());
  ASSERT_EQ(first.send("POST", "/v1/tasks", h, body), "");
  waitStat("/requests/by_route/create", 1);  // the first is in, its reply held
  HttpResponse dup = call("POST", "/v1/tasks", "sk-a", body, {{"Idempotency-Key", "k-slow"}});
  EXPECT_EQ(dup.status, 409) << dup.body;
  EXPECT_EQ(str(parseJson(dup.body), "/error_code"), "IDEMPOTENCY_KEY_PROCESSING");
  EXPECT_TRUE(isPositiveInteger(dup.header("Retry-After")));
  HttpResponse r = first.receive();
  ASSERT_EQ(r.status, 200) << r.error;
  std::string id = str(parseJson(r.body), "/data/taskId");
  HttpResponse replay = call("POST", "/v1/tasks", "sk-a", body, {{"Idempotency-Key", "k-slow"}});
  EXPECT_EQ(str(parseJson(replay.body), "/data/taskId"), id);
  EXPECT_EQ(num(stats(), "/idempotency/processing"), 1);
}

TEST_F(SimTest, UnauthorizedNotFoundAndAnotherKeysTask) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--keys", "sk-a,sk-b"}));
  EXPECT_EQ(call("GET", "/v1/tasks", "").status, 401);
  EXPECT_EQ(call("GET", "/v1/tasks", "sk-zzz").status, 401);
  std::string id = create("sk-a", createBody("gpt-image-2", "mine"));
  EXPECT_EQ(call("GET", "/v1/tasks/" + id, "sk-a").status, 200);
  HttpResponse theirs = call("GET", "/v1/tasks/" + id, "sk-b");
  EXPECT_EQ(theirs.status, 404);
  EXPECT_EQ(str(parseJson(theirs.body), "/error_code"), "TASK_NOT_FOUND");
  EXPECT_EQ(call("GET", "/v1/tasks/tk-hiapi-00000000000000000000000000", "sk-a").status, 404);
  std::string encoded = id;
  encoded.replace(2, 1, "%2D");  // clients percent-encode ids
  EXPECT_EQ(call("GET", "/v1/tasks/" + encoded, "sk-a").status, 200);
  EXPECT_EQ(call("GET", "/v1/nothing", "sk-a").status, 404);
}

TEST_F(SimTest, BadRequestsAndBodyTooLarge) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0"}));
  std::string big(10 * 1024 * 1024 + 1, 'x');
  HttpResponse large = call("POST", "/v1/tasks", "sk-a", big);
  EXPECT_EQ(large.status, 413) << large.error;
  for (const std::string& b :
       {std::string("{"), std::string("[]"), std::string(R"({"input":{}})"),
        std::string(R"({"model":"m"})"), std::string(R"({"model":"m","input":"x"})"),
        std::string(R"({"model":"m","input":{},"callback":{"url":"http://127.0.0.1/","when":"progress"}})")}) {
    HttpResponse r = call("POST", "/v1/tasks", "sk-a", b);
    EXPECT_EQ(r.status, 400) << b;
    EXPECT_EQ(str(parseJson(r.body), "/error_code"), "INVALID_REQUEST") << b;
  }
  EXPECT_EQ(call("GET", "/v1/tasks?size=101", "sk-a").status, 400);
  EXPECT_EQ(call("GET", "/v1/tasks?page=0", "sk-a").status, 400);
  ASSERT_EQ(call("POST", "/__config", "", R"({"max-body":"1KB"})").status, 200);
  EXPECT_EQ(call("POST", "/v1/tasks", "sk-a", createBody("m", std::string(2000, 'p'))).status, 413);
  auto s = stats();
  EXPECT_EQ(num(s, "/requests/by_status/413"), 2);
  EXPECT_EQ(num(s, "/requests/by_status/400"), 8);
  EXPECT_EQ(num(s, "/tasks_created"), 0);
}

TEST_F(SimTest, Fault5xxRatioWithinTolerance) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--fault-5xx", "0.25", "--seed", "7"}));
  HttpClient c(opts(true));
  const int kN = 400;
  int faults = 0;
  for (int i = 0; i < kN; ++i) {
    HttpResponse r = c.request("GET", "/v1/tasks", authHeaders("sk-a"));
    ASSERT_TRUE(r.ok()) << r.error;
    if (r.status == 502 || r.status == 503) {
      ++faults;
    } else {
      ASSERT_EQ(r.status, 200);
    }
  }
  EXPECT_NEAR(faults, kN / 4, 32);  // 0.25 ± 0.08
  auto s = stats();
  EXPECT_EQ(num(s, "/faults/http_5xx"), faults);
  EXPECT_EQ(std::max<int64_t>(0, num(s, "/requests/by_status/502")) +
                std::max<int64_t>(0, num(s, "/requests/by_status/503")),
            faults);
  EXPECT_EQ(num(s, "/requests/total"), kN);
  EXPECT_EQ(num(s, "/keys/sk-a/requests"), kN - faults);  // faults come before any processing
}

TEST_F(SimTest, FaultResetRatioWithinTolerance) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--fault-reset", "0.25", "--seed", "11"}));
  const int kN = 400;
  int resets = 0;
  for (int i = 0; i < kN; ++i) {
    HttpResponse r = call("GET", "/v1/tasks", "sk-a");
    if (!r.ok()) {
      ++resets;
      EXPECT_EQ(r.status, 0);
    } else {
      ASSERT_EQ(r.status, 200);
    }
  }
  EXPECT_NEAR(resets, kN / 4, 32);
  auto s = stats();
  EXPECT_EQ(num(s, "/faults/reset"), resets);
  EXPECT_EQ(num(s, "/requests/by_status/reset"), resets);
}

TEST_F(SimTest, StallAndLatencyStillAnswer) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--stall-ratio", "1", "--stall-time", "200ms",
                                    "--latency", "20ms", "--latency-jitter", "20ms"}));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(call("GET", "/v1/tasks", "sk-a").status, 200);
  }
  auto s = stats();
  EXPECT_EQ(num(s, "/faults/stall"), 3);
  EXPECT_EQ(num(s, "/faults/latency"), 3);
}

TEST_F(SimTest, LatencyAndJitterDelayEveryRequest) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--latency", "2ms", "--jitter", "10ms"}));
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(call("GET", "/v1/tasks", "sk-a").status, 200);
  }
  EXPECT_EQ(num(stats(), "/faults/latency"), 5);
  HttpResponse cfg = call("GET", "/__config", "");
  EXPECT_NE(cfg.body.find("\"jitter\":0.01"), std::string::npos) << cfg.body;
}

// Every limiter shape, with the counters on: 3 at once, then 429; the headers promise no more
// than Remaining before Reset (decimal seconds, within the shape's window), and are absent when
// switched off.
TEST_F(SimTest, LimiterShapesAndTheirRateLimitHeaders) {
  for (const char* shape : {"token-bucket", "gcra", "fixed-window", "sliding-window"}) {
    SCOPED_TRACE(shape);
    ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "1/m", "--burst", "3", "--limiter", shape,
                                      "--ratelimit-headers", "on"}));
    for (int i = 0; i < 4; ++i) {
      HttpResponse r = call("GET", "/v1/tasks", "sk-a");
      ASSERT_TRUE(r.ok()) << r.error;
      EXPECT_EQ(r.status, i < 3 ? 200 : 429) << i;
      EXPECT_EQ(r.header("X-RateLimit-Limit"), "3");
      EXPECT_EQ(r.header("X-RateLimit-Remaining"), std::to_string(std::max(0, 2 - i)));
      const double reset = std::stod(r.header("X-RateLimit-Reset"));
      EXPECT_GT(reset, 0.0);
      EXPECT_LE(reset, 180.0);  // the window (burst / rate = 3 min) at most
      EXPECT_NE(r.header("X-RateLimit-Reset").find('.'), std::string::npos);
      if (r.status == 429) {
        EXPECT_FALSE(r.header("Retry-After").empty());
      }
    }
    HttpResponse cfg = call("GET", "/__config", "");
    EXPECT_NE(cfg.body.find(std::string("\"limiter\":\"") + shape + "\""), std::string::npos);
    EXPECT_EQ(sim_->stop(), 0);
    sim_.reset();
  }
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "1/m", "--burst", "3", "--ratelimit-headers",
                                    "off"}));
  EXPECT_TRUE(call("GET", "/v1/tasks", "sk-a").header("X-RateLimit-Remaining").empty());
}

// Where a run began in the fixed windows' grid: the first request's window ends when its
// X-RateLimit-Reset says, so the phase and that Reset make one window; a reset forgets it.
TEST_F(SimTest, StatsSayWhereTheFirstRequestFellInItsFixedWindow) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "1/m", "--burst", "3", "--limiter", "fixed-window",
                                    "--ratelimit-headers", "on"}));
  EXPECT_TRUE(rapidjson::Pointer("/window_phase_ms").Get(stats())->IsNull());
  HttpResponse r = call("GET", "/v1/tasks", "sk-a");
  ASSERT_EQ(r.status, 200);
  const double reset_ms = std::stod(r.header("X-RateLimit-Reset")) * 1000.0;
  call("GET", "/v1/tasks", "sk-a");  // a later request moves nothing
  const double phase_ms = num(stats(), "/window_phase_ms");
  EXPECT_GE(phase_ms, 0.0);
  EXPECT_NEAR(phase_ms + reset_ms, 180'000.0, 2.0);  // the window: burst / rate = 3 min
  ASSERT_EQ(call("POST", "/__reset", "").status, 200);
  EXPECT_TRUE(rapidjson::Pointer("/window_phase_ms").Get(stats())->IsNull());
}

TEST_F(SimTest, LognormalDurationsVaryAroundTheMean) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--light-max", "0", "--light-duration",
                                    "150ms", "--duration-dist", "lognormal", "--duration-sigma",
                                    "0.6", "--seed", "3"}));
  const int n = 16;
  for (int i = 0; i < n; ++i) {
    create("sk-a", createBody("gpt-image-2", "p" + std::to_string(i)));
  }
  auto s = waitStat("/tiers/light/running", 0);
  const rapidjson::Value* tasks = rapidjson::Pointer("/tasks").Get(s);
  ASSERT_NE(tasks, nullptr);
  ASSERT_EQ(tasks->Size(), static_cast<rapidjson::SizeType>(n));
  double lo = 1e9, hi = 0;
  for (const auto& t : tasks->GetArray()) {
    const double d = t["terminal_ms"].GetDouble() - t["created_ms"].GetDouble();
    lo = std::min(lo, d);
    hi = std::max(hi, d);
  }
  // Uniform jitter of 0.1 keeps every duration within 0.9..1.1 of the mean (ratio <= 1.23);
  // a lognormal with sigma 0.6 spreads 16 draws far wider.
  EXPECT_GT(hi / std::max(lo, 1.0), 1.5) << lo << " " << hi;
}

// Each tier draws its run times from its own stream, afresh at every reset: the n-th task of a
// tier since a reset runs as long whatever else was created before or between it, so that runs
// through different clients meet the same tasks and a schedule of them can be computed after.
TEST_F(SimTest, EachTiersRunTimesStartOverAtAReset) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--heavy-max", "0", "--light-max", "0",
                                    "--heavy-duration", "60s", "--light-duration", "60s",
                                    "--duration-jitter", "0.5", "--seed", "3"}));
  const auto drawn = [this](const char* tier) {
    std::vector<int64_t> out;
    auto s = stats();
    const rapidjson::Value* v =
        rapidjson::Pointer((std::string("/durations_ms/") + tier).c_str()).Get(s);
    EXPECT_NE(v, nullptr);
    for (const auto& d : v->GetArray()) {
      out.push_back(d.GetInt64());
    }
    return out;
  };
  create("sk-a", createBody("gpt-image-2", "l1"));
  create("sk-a", createBody("seedance-2-0", "h1"));
  create("sk-a", createBody("gpt-image-2", "l2"));
  const std::vector<int64_t> light = drawn("light");
  const std::vector<int64_t> heavy = drawn("heavy");
  ASSERT_EQ(light.size(), 2u);
  ASSERT_EQ(heavy.size(), 1u);
  EXPECT_NE(light[0], light[1]);
  ASSERT_EQ(call("POST", "/__reset", "").status, 200);
  // Another order, and another key: the same run times, tier by tier.
  create("sk-b", createBody("seedance-2-0", "h1"));
  create("sk-b", createBody("seedance-2-0", "h2"));
  create("sk-b", createBody("gpt-image-2", "l1"));
  create("sk-b", createBody("gpt-image-2", "l2"));
  EXPECT_EQ(drawn("light"), light);
  const std::vector<int64_t> again = drawn("heavy");
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[0], heavy[0]);
}

TEST_F(SimTest, StatsEqualWhatWasSentAndResetClearsAll) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "1/h", "--burst", "6", "--light-max", "0",
                                    "--light-duration", "60s"}));
  std::string a = create("sk-s", createBody("gpt-image-2", "p1"));
  std::string b = create("sk-s", createBody("gpt-image-2", "p2"));
  create("sk-s", createBody("gpt-image-2", "p1"));  // a duplicate creation
  EXPECT_EQ(call("GET", "/v1/tasks/" + a, "sk-s").status, 200);
  EXPECT_EQ(call("GET", "/v1/tasks/" + b, "sk-s").status, 200);
  EXPECT_EQ(call("GET", "/v1/tasks", "sk-s").status, 200);
  EXPECT_EQ(call("GET", "/v1/tasks", "sk-s").status, 429);
  EXPECT_EQ(call("GET", "/v1/tasks", "sk-s").status, 429);
  EXPECT_EQ(call("GET", "/v1/other", "sk-t").status, 404);
  EXPECT_EQ(call("POST", "/v1/tasks", "", createBody("m", "x")).status, 401);

  auto s = stats();
  EXPECT_EQ(num(s, "/requests/total"), 10);
  EXPECT_EQ(num(s, "/requests/by_method/POST"), 4);
  EXPECT_EQ(num(s, "/requests/by_method/GET"), 6);
  EXPECT_EQ(num(s, "/requests/by_route/create"), 4);
  EXPECT_EQ(num(s, "/requests/by_route/detail"), 2);
  EXPECT_EQ(num(s, "/requests/by_route/list"), 3);
  EXPECT_EQ(num(s, "/requests/by_route/other"), 1);
  EXPECT_EQ(num(s, "/requests/by_status/200"), 6);
  EXPECT_EQ(num(s, "/requests/by_status/429"), 2);
  EXPECT_EQ(num(s, "/requests/by_status/404"), 1);
  EXPECT_EQ(num(s, "/requests/by_status/401"), 1);
  EXPECT_EQ(num(s, "/requests/by_route_status/list/429"), 2);
  EXPECT_EQ(num(s, "/rejected_429/rate"), 2);
  EXPECT_EQ(num(s, "/rejected_429/concurrency"), 0);
  EXPECT_EQ(num(s, "/keys/sk-s/requests"), 8);
  EXPECT_EQ(num(s, "/keys/sk-s/admitted"), 6);
  EXPECT_EQ(num(s, "/keys/sk-s/rejected_429"), 2);
  EXPECT_GE(num(s, "/keys/sk-s/max_admitted_1s"), 1);
  EXPECT_LE(num(s, "/keys/sk-s/max_admitted_1s"), 6);
  EXPECT_EQ(num(s, "/keys/sk-t/requests"), 1);
  EXPECT_EQ(num(s, "/tasks_created"), 3);
  EXPECT_EQ(num(s, "/duplicate_creations"), 1);
  EXPECT_EQ(num(s, "/tiers/light/running"), 3);
  ASSERT_EQ(rapidjson::Pointer("/tasks").Get(s)->Size(), 3u);
  EXPECT_EQ(str(s, "/tasks/0/taskId"), a);
  EXPECT_EQ(str(s, "/tasks/0/model"), "gpt-image-2");
  EXPECT_EQ(str(s, "/tasks/0/tier"), "light");
  EXPECT_GE(num(s, "/tasks/0/created_ms"), 0);
  EXPECT_GT(num(s, "/tasks/0/created_unix_ms"), 0);
  EXPECT_TRUE(rapidjson::Pointer("/tasks/0/terminal_ms").Get(s)->IsNull());

  ASSERT_EQ(call("POST", "/__reset", "").status, 200);
  s = stats();
  EXPECT_EQ(num(s, "/requests/total"), 0);
  EXPECT_EQ(num(s, "/tasks_created"), 0);
  EXPECT_EQ(rapidjson::Pointer("/tasks").Get(s)->Size(), 0u);
  EXPECT_EQ(rapidjson::Pointer("/keys").Get(s)->MemberCount(), 0u);
  EXPECT_EQ(num(s, "/tiers/light/running"), 0);
  EXPECT_EQ(call("GET", "/v1/tasks/" + a, "sk-s").status, 404);  // bucket is full again, task gone
}

TEST_F(SimTest, CallbackDeliveredSignedAndRedelivered) {
  CallbackReceiver receiver({500, 200});
  ASSERT_GT(receiver.port(), 0);
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--light-duration", "100ms",
                                    "--duration-jitter", "0", "--callback-secret", "s3cr3t",
                                    "--callback-backoff", "50ms"}));
  std::string url = "http://127.0.0.1:" + std::to_string(receiver.port()) + "/hook?x=1";
  std::string id = create("sk-a", createBody("gpt-image-2", "cb",
                                            ",\"callback\":{\"url\":\"" + url + "\",\"when\":\"final\"}"));
  auto got = receiver.waitFor(2, 15000);
  ASSERT_EQ(got.size(), 2u);
  for (const auto& r : got) {
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.target, "/hook?x=1");
    std::string ts = r.headers.count("x-hiapi-timestamp") ? r.headers.at("x-hiapi-timestamp") : "";
    ASSERT_TRUE(allDigits(ts) && ts.size() == 10) << ts;
    EXPECT_LE(std::llabs(std::atoll(ts.c_str()) - static_cast<long long>(std::time(nullptr))), 300);
    EXPECT_EQ(r.headers.count("x-hiapi-signature") ? r.headers.at("x-hiapi-signature") : "",
              hmacHex("s3cr3t", ts + "." + r.body));
    auto d = parseJson(r.body);  // the bare detail, no envelope
    EXPECT_EQ(str(d, "/taskId"), id);
    EXPECT_EQ(str(d, "/status"), "success");
    EXPECT_FALSE(has(d, "/code"));
  }
  auto s = waitStat("/callbacks/delivered", 1);
  EXPECT_EQ(num(s, "/callbacks/attempts"), 2);
  EXPECT_EQ(num(s, "/callbacks/failed"), 0);

  // A non-loopback receiver is never called.
  create("sk-a", createBody("gpt-image-2", "far",
                            ",\"callback\":{\"url\":\"http://10.1.2.3/hook\"}"));
  waitStat("/callbacks/refused", 1);
}

TEST_F(SimTest, CallbackAttemptsAreBounded) {
  CallbackReceiver receiver({503});
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--light-duration", "50ms",
                                    "--callback-attempts", "3", "--callback-backoff", "20ms"}));
  // The receiver's own address: "localhost" is also ::1 in Debian's default /etc/hosts, where
  // the receiver does not listen.
  std::string url = "http://127.0.0.1:" + std::to_string(receiver.port()) + "/h";
  create("sk-a", createBody("gpt-image-2", "x", ",\"callback\":{\"url\":\"" + url + "\"}"));
  auto s = waitStat("/callbacks/failed", 1);
  EXPECT_EQ(num(s, "/callbacks/attempts"), 3);
  EXPECT_EQ(num(s, "/callbacks/delivered"), 0);
  ASSERT_EQ(receiver.waitFor(3, 5000).size(), 3u);
  EXPECT_TRUE(receiver.waitFor(4, 0).size() == 3u);
  EXPECT_EQ(receiver.waitFor(3, 0)[0].headers.count("x-hiapi-signature"), 0u);  // no secret
}

TEST_F(SimTest, TlsWithCertificateMadeAtTestTime) {
  char tmpl[] = "/tmp/hiapi-sim-tls-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -keyout " + dir + "/key.pem -out " +
                    dir + "/cert.pem -days 1 -subj /CN=localhost "
                    "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    std::filesystem::remove_all(dir);
    GTEST_SKIP() << "openssl CLI unavailable";
  }
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--tls-cert", dir + "/cert.pem", "--tls-key",
                                    dir + "/key.pem"}));
  HttpClient::Options o = opts(true);
  o.tls = true;
  o.ca_file = dir + "/cert.pem";
  HttpClient c(o);
  HttpResponse r = c.request("POST", "/v1/tasks", authHeaders("sk-a"), createBody("m", "tls"));
  ASSERT_EQ(r.status, 200) << r.error;
  EXPECT_EQ(c.request("GET", "/__stats").status, 200);
  EXPECT_EQ(sim_->stdoutText(),
            "hiapi-sim listening on 127.0.0.1:" + std::to_string(sim_->port()) + "\n");
  HttpClient::Options wrong = o;
  wrong.verify_name = "not-this-host.example";
  EXPECT_FALSE(HttpClient(wrong).request("GET", "/__stats").ok());  // host name is checked
  EXPECT_FALSE(HttpClient(opts()).request("GET", "/__stats").ok());  // plain HTTP is not served
  std::filesystem::remove_all(dir);
}

TEST_F(SimTest, SameSeedSameOutcomes) {
  auto outcomes = [this](const std::string& seed) {
    std::string err;
    sim_ = SimProcess::start({"--rate", "0", "--seed", seed, "--fail-ratio", "0.5",
                              "--light-duration", "60s", "--light-max", "0"},
                             &err);
    EXPECT_TRUE(sim_ != nullptr) << err;
    std::string seq;
    if (sim_ == nullptr) {
      return seq;
    }
    for (int i = 0; i < 16; ++i) {
      create("sk-a", createBody("gpt-image-2", "s" + std::to_string(i)));
    }
    auto s = stats();
    for (int i = 0; i < 16; ++i) {
      std::string p = "/tasks/" + std::to_string(i) + "/outcome";
      seq += str(s, p.c_str()) == "fail" ? 'F' : 'S';
    }
    EXPECT_EQ(sim_->stop(), 0);
    sim_.reset();
    return seq;
  };
  std::string a = outcomes("42");
  std::string b = outcomes("42");
  std::string c = outcomes("43");
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a.find('F'), std::string::npos);
  EXPECT_NE(a.find('S'), std::string::npos);
}

TEST_F(SimTest, ConfigEndpointValidatesAndApplies) {
  ASSERT_NO_FATAL_FAILURE(startSim({"--rate", "0", "--light-duration", "50ms"}));
  HttpResponse bad = call("POST", "/__config", "", R"({"port":1})");
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.body.find("port"), std::string::npos);
  EXPECT_EQ(call("POST", "/__config", "", R"({"rate":"fast"})").status, 400);
  EXPECT_EQ(call("POST", "/__config", "", "not json").status, 400);
  ASSERT_EQ(call("POST", "/__config", "", R"({"fail-ratio":1,"duration-jitter":0})").status, 200);
  auto cfg = parseJson(call("GET", "/__config", "").body);
  EXPECT_EQ(num(cfg, "/fail-ratio"), 1);
  std::string id = create("sk-a", createBody("m", "will fail"));
  rapidjson::Document last;
  EXPECT_EQ(pollUntilTerminal("sk-a", id, &last).back(), "fail");
}

}  // namespace
}  // namespace hiapi::test
