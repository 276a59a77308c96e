#pragma once
// Runs hiapi-sim as a child process on port 0 and learns its port from --port-file.
//
//   std::string err;
//   auto sim = SimProcess::start({"--rate", "2/s", "--burst", "2"}, &err);
//   ASSERT_TRUE(sim) << err;
//   HttpClient c({.port = sim->port()});
//
// The port file is polled with a deadline (never a fixed sleep); an early exit of the child is
// reported with its stderr. stop() sends SIGTERM and returns the exit status (0 expected).

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

namespace hiapi::test {

class SimProcess {
public:
  /// Starts `binary` (default: HIAPI_SIM_BIN) with `--port 0 --port-file <tmp>/port` + args.
  /// @return nullptr with *error on failure (exited, or no port within timeout_ms).
  static std::unique_ptr<SimProcess> start(const std::vector<std::string>& args,
                                           std::string* error, int timeout_ms = 10000,
                                           const std::string& binary = "");
  ~SimProcess();
  SimProcess(const SimProcess&) = delete;
  SimProcess& operator=(const SimProcess&) = delete;

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  /// A private temporary directory, removed with the process object.
  const std::string& dir() const { return dir_; }
  std::string stdoutText() const;
  std::string stderrText() const;
  /// SIGTERM, wait (bounded), SIGKILL if needed. @return the exit code, or -1 if killed/unknown.
  int stop(int timeout_ms = 5000);

private:
  SimProcess() = default;
  pid_t pid_ = -1;
  int port_ = 0;
  std::string dir_;
  int exit_code_ = -1;
};

/// Reads a whole file ("" when missing).
std::string readFile(const std::string& path);

}  // namespace hiapi::test
