// The tables of the plain sections: one rule per key, in the order they are read. The sections
// that are lists (keys, limits.tiers) are in config_lists.cc, upstream in config_upstream.cc.

#include <chrono>

#include "config_parser.h"

namespace hiapi::core::config_internal {

using namespace std::chrono_literals;

const FieldTable<ListenConfig>& listenFields() {
  using S = ListenConfig;
  static const FieldTable<S> table = {
      bindValue("address", &S::address, &Parser::address),
      bindInteger("port", &S::port, 0, 65535),
      bindValue("allow_non_loopback", &S::allow_non_loopback, &Parser::boolean),
      bindValue("max_body_size", &S::max_body_bytes, &Parser::size),
      bindValue("max_header_size", &S::max_header_bytes, &Parser::size),
      bindValue("client_timeout", &S::client_timeout, &Parser::positiveDuration),
      bindValue("header_timeout", &S::header_timeout, &Parser::positiveDuration),
      bindValue("body_timeout", &S::body_timeout, &Parser::positiveDuration),
      bindInteger("max_connections", &S::max_connections, 1, 1'000'000),
      bindValue("max_reply_buffer", &S::max_reply_buffer_bytes, &Parser::size),
  };
  return table;
}

const FieldTable<AdminConfig>& adminFields() {
  using S = AdminConfig;
  static const FieldTable<S> table = {
      bindValue("enabled", &S::enabled, &Parser::boolean),
      bindValue("address", &S::address, &Parser::address),
      bindInteger("port", &S::port, 0, 65535),
  };
  return table;
}

const FieldTable<LimitsConfig>& limitsFields() {
  using S = LimitsConfig;
  static const FieldTable<S> table = {
      bindChoice("mode", &S::mode,
                 {{"enforce", LimitMode::Enforce}, {"shadow", LimitMode::Shadow}},
                 "enforce or shadow"),
      bindValue("rate", &S::rate, &Parser::rate),
      bindValue("burst", &S::burst, &Parser::burst),
      bindFraction("decrease_factor", &S::decrease_factor, /*open_top=*/true),
      bindFraction("min_rate_fraction", &S::min_rate_fraction, /*open_top=*/false),
      bindValue("recovery_time", &S::recovery_time, &Parser::positiveDuration),
      bindValue("max_cooldown", &S::max_cooldown, &Parser::positiveDuration),
      bindValue("repeat_window", &S::repeat_window, &Parser::duration),
      bindCappedDuration("phase_margin", &S::phase_margin, &Parser::duration, 1s,
                         "must be at most 1s (a guard against arrival jitter, not a pause)"),
      bindChoice("pace_without_counters", &S::pace_without_counters,
                 {{"window", UncountedPacing::Window}, {"bucket", UncountedPacing::Bucket}},
                 "window or bucket"),
      {"tiers", [](const Parser& p, const Field& f, S& s) { p.parseTiers(f, s.tiers); }},
  };
  return table;
}

namespace {

FieldRule<QueueConfig> headerName(std::string_view key, std::string QueueConfig::*member) {
  return {key, [member](const Parser& p, const Field& f, QueueConfig& s) {
            s.*member = p.str(f);
            if (!isToken(s.*member)) {
              p.fail(f, "invalid HTTP header name " + quote(s.*member));
            }
          }};
}

}  // namespace

const FieldTable<QueueConfig>& queueFields() {
  using S = QueueConfig;
  static const FieldTable<S> table = {
      bindInteger("max_size", &S::max_size, 1, 10'000'000),
      bindInteger("max_per_client", &S::max_per_client, 0, 10'000'000),
      {"deadline",
       [](const Parser& p, const Field& f, S& s) {
         s.deadline = p.positiveDuration(f);
         if (s.deadline >= 60s) {
           p.fail(f, "must be less than 60s: HiAPI clients give up after 60 s, so a queued "
                     "request must get its answer (if only a 429) before then");
         }
       }},
      bindCappedDuration("create_gather", &S::create_gather, &Parser::duration, 1s,
                         "must be at most 1s: every create burst waits this long before the "
                         "first is sent"),
      headerName("client_header", &S::client_header),
      headerName("deadline_header", &S::deadline_header),
  };
  return table;
}

const FieldTable<RetryConfig>& retryFields() {
  using S = RetryConfig;
  static const FieldTable<S> table = {
      bindInteger("max_attempts", &S::max_attempts, 1, 10),
      bindValue("base_delay", &S::base_delay, &Parser::positiveDuration),
      bindCappedDuration("max_delay", &S::max_delay, &Parser::positiveDuration, 60s,
                         "must be at most 60s (clients time out after 60 s)"),
      {"budget_ratio",
       [](const Parser& p, const Field& f, S& s) {
         const double r = p.number(f);
         if (r < 0 || r > 1) {
           p.fail(f, "must be between 0 and 1");
         }
         s.budget_ratio = r;
       }},
      bindInteger("budget_min_retries", &S::budget_min_retries, 0, 1'000'000),
      // YAML 1.1 tools (PyYAML, Ansible) write `off` back as `false`: the same word here.
      bindChoice("idempotency", &S::idempotency,
                 {{"off", IdempotencyMode::Off},
                  {"false", IdempotencyMode::Off},
                  {"no", IdempotencyMode::Off},
                  {"inject", IdempotencyMode::Inject}},
                 "off or inject"),
  };
  return table;
}

const FieldTable<TasksConfig>& tasksFields() {
  using S = TasksConfig;
  static const FieldTable<S> table = {
      {"terminal_statuses",
       [](const Parser& p, const Field& f, S& s) {
         s.terminal_statuses = p.stringList(f);
         if (s.terminal_statuses.empty()) {
           p.fail(f, "at least one terminal status is needed (HiAPI's are success and fail)");
         }
       }},
      bindValue("tolerated_terminal", &S::tolerated_terminal, &Parser::stringList),
      bindValue("terminal_ttl", &S::terminal_ttl, &Parser::positiveDuration),
      bindValue("not_found_ttl", &S::not_found_ttl, &Parser::duration),
      bindInteger("cache_max_entries", &S::cache_max_entries, 1, 100'000'000),
      bindValue("cache_max_bytes", &S::cache_max_bytes, &Parser::size),
      bindValue("reconcile", &S::reconcile, &Parser::boolean),
      bindValue("reconcile_interval", &S::reconcile_interval, &Parser::positiveDuration),
      bindValue("state_file", &S::state_file, &Parser::optionalStr),
      bindValue("state_save_interval", &S::state_save_interval, &Parser::positiveDuration),
      bindValue("max_hold", &S::max_hold, &Parser::duration),
      bindCappedDuration("hold_near_end", &S::hold_near_end, &Parser::duration, 10s,
                         "at most 10s (a held poll still has to be answered well within the "
                         "client's timeout)",
                         ShowValue::Yes),
  };
  return table;
}

const FieldTable<DeferredConfig>& deferredFields() {
  using S = DeferredConfig;
  static const FieldTable<S> table = {
      {"journal",
       [](const Parser& p, const Field& f, S& s) {
         const std::string path = p.optionalStr(f);
         s.journal = path.empty() ? "" : p.resolve(path).string();
       }},
      bindInteger("max_per_key", &S::max_per_key, 0, 1'000'000),
      bindInteger("max_total", &S::max_total, 0, 1'000'000),
      bindCappedDuration("max_age", &S::max_age, &Parser::positiveDuration, 23h,
                         "at most 23h: a create resubmitted after a restart must stay inside "
                         "HiAPI's ~24 h idempotency window",
                         ShowValue::Yes),
      bindValue("keep", &S::keep, &Parser::positiveDuration),
  };
  return table;
}

const FieldTable<LogConfig>& logFields() {
  using S = LogConfig;
  static const FieldTable<S> table = {
      bindChoice("format", &S::format,
                 {{"logfmt", LogFormat::Logfmt}, {"json", LogFormat::Json}}, "logfmt or json"),
      bindChoice("level", &S::level,
                 {{"debug", LogLevel::Debug},
                  {"info", LogLevel::Info},
                  {"warn", LogLevel::Warn},
                  {"warning", LogLevel::Warn},
                  {"error", LogLevel::Error}},
                 "debug, info, warn or error"),
  };
  return table;
}

}  // namespace hiapi::core::config_internal
