#pragma once
// Service-like clients for integration tests: each creates tasks (unique prompts) and polls each
// until terminal, in a child process of its own; the parent collects what each saw.

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include <rapidjson/document.h>

#include "harness.h"

namespace hiapi::test {

struct ClientSpec {
  std::string name;               ///< X-HiAPI-Client value ("" = none)
  std::string key;                ///< bearer key ("" = none: inject mode)
  int tasks = 10;
  int heavy_every = 4;            ///< every Nth task uses a heavy model (0 = none)
  std::chrono::milliseconds poll_interval{200};
  std::chrono::milliseconds give_up{120000};
  std::string prompt_prefix;
  uint16_t port = 0;              ///< the proxy this client talks to (0 = runClients' port)
};

struct ClientResult {
  int creates_ok = 0;
  int done_success = 0;
  int done_fail = 0;
  int status_429 = 0;             ///< any request answered 429 to the client
  int other_errors = 0;           ///< any other non-2xx, or no answer
  int requests = 0;
  int cache_hits = 0, coalesced = 0, misses = 0;
  int unfinished = 0;
  std::string first_error;
};

/// What a fleet of clients got, summed over its ClientResults.
struct ClientTotals {
  int creates_ok = 0, done = 0, c429 = 0, errors = 0, unfinished = 0, requests = 0;
  std::string first_error;  ///< the first client's first error
};
ClientTotals sum(const std::vector<ClientResult>& rs);

/// Runs @p specs, each in its own child process with one thread per task; waits for all.
std::vector<ClientResult> runClients(uint16_t proxy_port, const std::vector<ClientSpec>& specs,
                                     const TempDir& dir);

/// @return the string field @p name of a HiAPI reply's `data` object ("" when absent).
std::string dataField(const std::string& body, const std::string& name);

/// GET /__stats of the simulator, parsed.
rapidjson::Document simStats(uint16_t sim_port);

/// Convenience readers of a parsed JSON document: 0 / "" when missing.
int64_t jsonInt(const rapidjson::Value& v, std::initializer_list<const char*> path);

}  // namespace hiapi::test
