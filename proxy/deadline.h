// A one-shot deadline that runs a callback (typically: close a socket) when
// it expires. Closing the socket aborts whatever operation is pending on it,
// which works for every Asio operation, SSL handshakes included, without
// relying on per-operation cancellation support.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "proxy/asio.h"

namespace pgcloak::proxy {

class Deadline {
 public:
  explicit Deadline(asio::any_io_executor ex) : timer_(ex) {}
  ~Deadline() { disarm(); }
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  void arm(std::chrono::steady_clock::duration after, std::function<void()> on_expire) {
    disarm();
    armed_ = std::make_shared<bool>(true);
    expired_ = false;
    timer_.expires_after(after);
    // The handler may already be queued when disarm() runs; the shared flag
    // (same thread, no race) keeps it from touching a destroyed socket.
    timer_.async_wait([armed = armed_, this, cb = std::move(on_expire)](error_code ec) {
      if (ec || !*armed) return;
      *armed = false;
      expired_ = true;
      cb();
    });
  }
  void disarm() {
    if (armed_) *armed_ = false;
    armed_.reset();
    timer_.cancel();
  }
  bool expired() const { return expired_; }

 private:
  asio::steady_timer timer_;
  std::shared_ptr<bool> armed_;
  bool expired_ = false;
};

}  // namespace pgcloak::proxy
