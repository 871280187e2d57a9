#pragma once

// Many non-blocking socket reads and writes in one system call (io_uring).
//
// Why: relaying a transaction costs a proxy four socket calls (read the
// query, write it upstream, read the result, write it back). On a virtual
// machine a system call's entry and exit alone cost about 1 µs (measured
// on the CI machine: `getppid` 1.0 µs), a fifth of the relay's CPU per
// transaction. The relay loop gathers the reads (and, separately, the
// writes) that one epoll wake-up found ready across all its sessions and
// issues them together, so the entry cost is paid once per batch.
//
// Every operation carries MSG_DONTWAIT. io_uring then performs it inside
// io_uring_enter and completes it there, with -EAGAIN when the socket is
// empty or full, rather than parking it until the socket is ready. So
// buffers are needed only until run() returns, exactly as with recv() and
// send(), and the caller keeps epoll's readiness model. create() checks this
// behaviour on a socket pair: a kernel that would park the operation is not
// used.
//
// Not thread-safe: one per relay loop, used by the loop's thread only.

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "protocol/result.h"

struct io_uring;
struct io_uring_cqe;

namespace pgcloak::proxy {

class IoBatch {
 public:
  struct Completion {
    uint64_t tag;
    ssize_t res;  // as the system call returns it, or -errno
  };

  // Null with the reason when io_uring cannot be used here (an old kernel,
  // io_uring disabled by sysctl, or a seccomp profile that refuses it).
  static Result<std::unique_ptr<IoBatch>> create(unsigned entries);
  ~IoBatch();
  IoBatch(const IoBatch&) = delete;
  IoBatch& operator=(const IoBatch&) = delete;

  size_t capacity() const { return capacity_; }
  size_t size() const { return ops_.size(); }
  bool full() const { return ops_.size() >= capacity_; }

  // Queue a recv(fd, buf, len, MSG_DONTWAIT) or send(fd, buf, len,
  // MSG_DONTWAIT | MSG_NOSIGNAL). False when the batch is full: run it first.
  bool recv(int fd, void* buf, size_t len, uint64_t tag);
  bool send(int fd, const void* buf, size_t len, uint64_t tag);

  // Issues everything queued, in one io_uring_enter, and returns each
  // operation's result (valid until the next call). Should io_uring fail,
  // the operations are done one by one with recv() and send(), so a result
  // is always there.
  std::span<const Completion> run();

  // Batches issued through io_uring, and operations in them.
  uint64_t batches() const { return batches_; }
  uint64_t operations() const { return operations_; }
  // io_uring failed once and was given up: run() now does each operation
  // with its own system call.
  bool failed() const { return failed_; }

 private:
  struct Op {
    int fd;
    bool send;
    void* buf;
    size_t len;
    uint64_t tag;
  };
  IoBatch() = default;
  bool queue(const Op& op);
  void run_directly(size_t i);
  bool take(struct io_uring_cqe* cqe);

  std::unique_ptr<io_uring> ring_;
  size_t capacity_ = 0;
  std::vector<Op> ops_;
  std::vector<Completion> done_;
  std::vector<uint8_t> have_;  // per queued operation: its completion was taken
  bool failed_ = false;
  uint64_t batches_ = 0;
  uint64_t operations_ = 0;
};

}  // namespace pgcloak::proxy
