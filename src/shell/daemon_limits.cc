// The admin API's runtime limit changes (PUT /limits/keys/<name>, /limits/tiers/<name>): parsing
// and validating the request body into a changed configuration. Kept apart from the daemon's
// lifecycle because it is request handling with its own grammar and error messages, and the
// daemon's part is only to put the result in force (apply) and audit it.

#include <algorithm>
#include <cmath>
#include <optional>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "hiapi/shell/daemon.h"

namespace hiapi::shell {

namespace {

std::string jsonError(const std::string& message) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  w.Key("error");
  w.String(message.c_str(), static_cast<rapidjson::SizeType>(message.size()));
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize()) + "\n";
}

/// A rate given as "2/s" (the file's grammar) or a number of requests per second.
std::optional<core::Rate> rateFrom(const rapidjson::Value& v) {
  if (v.IsString()) {
    return core::parseRate(v.GetString());
  }
  if (v.IsNumber() && v.GetDouble() > 0 && std::isfinite(v.GetDouble())) {
    return core::Rate{v.GetDouble()};
  }
  return std::nullopt;
}

}  // namespace

AdminServer::LimitsReply Daemon::changeLimits(std::string_view rest, std::string_view body,
                                              const std::string& peer) {
  // keys/<name> {"rate": "2/s", "burst": 3}   tiers/<name> {"max_running": 4}
  const size_t slash = rest.find('/');
  const std::string_view kind = rest.substr(0, slash);
  const std::string name(slash == std::string_view::npos ? "" : rest.substr(slash + 1));
  if ((kind != "keys" && kind != "tiers") || name.empty()) {
    return {404, jsonError("PUT /limits/keys/<key name> or /limits/tiers/<tier name>")};
  }
  rapidjson::Document d;
  if (d.Parse(body.data(), body.size()).HasParseError() || !d.IsObject()) {
    return {400, jsonError("the body must be a JSON object")};
  }
  auto next = std::make_shared<core::Config>(*cfg_);
  std::vector<LogField> audit{{"peer", peer}, {"target", std::string(kind)}, {"name", name}};
  if (kind == "keys") {
    auto k = std::find_if(next->keys.begin(), next->keys.end(),
                          [&](const core::KeyConfig& c) { return c.name == name; });
    if (k == next->keys.end()) {
      return {404, jsonError("no configured key is named '" + name + "'")};
    }
    for (auto m = d.MemberBegin(); m != d.MemberEnd(); ++m) {
      const std::string_view field(m->name.GetString(), m->name.GetStringLength());
      if (field == "rate") {
        const std::optional<core::Rate> r = rateFrom(m->value);
        if (!r) {
          return {400, jsonError("rate: expected a rate like \"2/s\" or \"90/min\", or a "
                                 "number of requests per second")};
        }
        k->rate = r;
        audit.emplace_back("rate_per_second", r->per_second);
      } else if (field == "burst") {
        if (!m->value.IsNumber() || !(m->value.GetDouble() >= 1) ||
            !std::isfinite(m->value.GetDouble())) {
          return {400, jsonError("burst: expected a number of at least 1")};
        }
        k->burst = m->value.GetDouble();
        audit.emplace_back("burst", *k->burst);
      } else {
        return {400, jsonError("unknown field '" + std::string(field) + "' (rate, burst)")};
      }
    }
  } else {
    auto t = std::find_if(next->limits.tiers.begin(), next->limits.tiers.end(),
                          [&](const core::TierConfig& c) { return c.name == name; });
    if (t == next->limits.tiers.end()) {
      return {404, jsonError("no tier is named '" + name + "'")};
    }
    for (auto m = d.MemberBegin(); m != d.MemberEnd(); ++m) {
      const std::string_view field(m->name.GetString(), m->name.GetStringLength());
      if (field != "max_running") {
        return {400, jsonError("unknown field '" + std::string(field) + "' (max_running)")};
      }
      if (!m->value.IsUint() || m->value.GetUint() < 1 || m->value.GetUint() > 100000) {
        return {400, jsonError("max_running: expected an integer from 1 to 100000")};
      }
      t->max_running = m->value.GetUint();
      audit.emplace_back("max_running", t->max_running);
    }
  }
  if (audit.size() == 3) {
    return {400, jsonError("nothing to change")};
  }
  apply(next);
  // The audit trail: who changed what. It lasts until the next reload or restart.
  log_.log(core::LogLevel::Warn, "limits changed at runtime (until the next reload)", audit);
  return {200, "{\"ok\":true}\n"};
}

}  // namespace hiapi::shell
