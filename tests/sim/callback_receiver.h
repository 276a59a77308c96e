#pragma once
// A loopback HTTP receiver for callback tests: a thread accepts connections on 127.0.0.1:0,
// reads one request per connection, records it and answers with the next status from a script
// (the last one repeats).

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace hiapi::test {

struct ReceivedRequest {
  std::string method;
  std::string target;
  std::map<std::string, std::string> headers;  ///< names lowercased
  std::string body;
};

class CallbackReceiver {
public:
  /// @param statuses reply status per request, in order; the last repeats. Default {200}.
  explicit CallbackReceiver(std::vector<int> statuses = {200});
  ~CallbackReceiver();
  CallbackReceiver(const CallbackReceiver&) = delete;
  CallbackReceiver& operator=(const CallbackReceiver&) = delete;

  int port() const { return port_; }
  /// Waits until `n` requests arrived or `timeout_ms` passed. @return all received so far.
  std::vector<ReceivedRequest> waitFor(size_t n, int timeout_ms);

private:
  void run();
  void serve(int fd);

  std::vector<int> statuses_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<ReceivedRequest> received_;
  std::thread thread_;
};

}  // namespace hiapi::test
