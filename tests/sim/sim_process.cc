// Child-process launcher for hiapi-sim tests.

#include "sim_process.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace hiapi::test {

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::unique_ptr<SimProcess> SimProcess::start(const std::vector<std::string>& args,
                                              std::string* error, int timeout_ms,
                                              const std::string& binary) {
  std::unique_ptr<SimProcess> p(new SimProcess());
  char tmpl[] = "/tmp/hiapi-sim-test-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    *error = "mkdtemp failed";
    return nullptr;
  }
  p->dir_ = tmpl;
  std::string port_file = p->dir_ + "/port";
  std::string out_file = p->dir_ + "/stdout";
  std::string err_file = p->dir_ + "/stderr";
  std::string bin = binary.empty() ? std::string(HIAPI_SIM_BIN) : binary;

  // Everything the child needs is built before fork(): the child only calls open/dup2/exec.
  std::vector<std::string> all = {bin, "--port", "0", "--port-file", port_file};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);

  pid_t pid = fork();
  if (pid < 0) {
    *error = "fork failed";
    return nullptr;
  }
  if (pid == 0) {
    // If the test process dies (crash, abort), the simulator goes with it: no orphans.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    int out = open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out >= 0) {
      dup2(out, 1);
    }
    if (err >= 0) {
      dup2(err, 2);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  p->pid_ = pid;

  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (int i = 0; i < 100000; ++i) {  // bounded in count too
    std::string text = readFile(port_file);
    if (!text.empty() && text.back() == '\n') {
      p->port_ = std::atoi(text.c_str());
      if (p->port_ > 0) {
        return p;
      }
    }
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      p->pid_ = -1;
      *error = "hiapi-sim exited early (status " + std::to_string(status) +
               "): " + readFile(err_file);
      return nullptr;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      *error = "no port file within " + std::to_string(timeout_ms) + " ms";
      return nullptr;  // the destructor kills the child
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // poll interval, not a wait
  }
  *error = "no port file";
  return nullptr;
}

SimProcess::~SimProcess() {
  stop();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string SimProcess::stdoutText() const { return readFile(dir_ + "/stdout"); }
std::string SimProcess::stderrText() const { return readFile(dir_ + "/stderr"); }

int SimProcess::stop(int timeout_ms) {
  if (pid_ <= 0) {
    return exit_code_;
  }
  kill(pid_, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      break;
    }
    if (r < 0 || std::chrono::steady_clock::now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      exit_code_ = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  pid_ = -1;
  return exit_code_;
}

}  // namespace hiapi::test
