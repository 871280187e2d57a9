#include "proxy/io_batch.h"

#include <liburing.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "protocol/sqlstate.h"

namespace pgcloak::proxy {

namespace {

Error unavailable(const std::string& why) {
  return Error::make(sqlstate::internal_error, "io_uring is not available: " + why);
}

// One operation issued and, if the kernel completed it inside
// io_uring_enter, its result.
std::optional<int> issue_one(io_uring& ring, int fd, void* buf, size_t len, bool send) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  if (sqe == nullptr) return std::nullopt;
  if (send) {
    io_uring_prep_send(sqe, fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
  } else {
    io_uring_prep_recv(sqe, fd, buf, len, MSG_DONTWAIT);
  }
  if (io_uring_submit(&ring) != 1) return std::nullopt;
  io_uring_cqe* cqe = nullptr;
  if (io_uring_peek_cqe(&ring, &cqe) != 0 || cqe == nullptr) return std::nullopt;
  const int res = cqe->res;
  io_uring_cqe_seen(&ring, cqe);
  return res;
}

// The relay relies on MSG_DONTWAIT operations completing inside
// io_uring_enter (-EAGAIN instead of waiting): a parked operation would
// write into a buffer the loop has reused. Checked on a socket pair.
Status check_inline_completion(io_uring& ring) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
    return unavailable(std::string("socketpair: ") + std::strerror(errno));
  }
  char buf[8] = {};
  Status st = ok_status();
  auto empty = issue_one(ring, sv[0], buf, sizeof buf, false);
  if (!empty || *empty != -EAGAIN) {
    st = unavailable("a non-blocking receive on an empty socket did not complete at once");
  } else if (::send(sv[1], "x", 1, MSG_NOSIGNAL) != 1) {
    st = unavailable(std::string("socketpair send: ") + std::strerror(errno));
  } else if (auto got = issue_one(ring, sv[0], buf, sizeof buf, false); !got || *got != 1 || buf[0] != 'x') {
    st = unavailable("a receive with data waiting did not return it");
  } else if (auto sent = issue_one(ring, sv[1], buf, 1, true); !sent || *sent != 1) {
    st = unavailable("a send did not complete at once");
  }
  ::close(sv[0]);
  ::close(sv[1]);
  return st;
}

}  // namespace

Result<std::unique_ptr<IoBatch>> IoBatch::create(unsigned entries) {
  std::unique_ptr<IoBatch> b(new IoBatch());
  b->ring_ = std::make_unique<io_uring>();
  // SUBMIT_ALL: one failing operation does not stop the rest of the batch
  // from being issued (kernel 5.18). COOP_TASKRUN: no interrupt to run
  // completion work; everything completes inline anyway (5.19).
  int rc = io_uring_queue_init(entries, b->ring_.get(), IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN);
  if (rc == -EINVAL) rc = io_uring_queue_init(entries, b->ring_.get(), 0);
  if (rc < 0) {
    b->ring_.reset();
    return unavailable(std::strerror(-rc));
  }
  if (auto st = check_inline_completion(*b->ring_); !st) return st.error();
  b->capacity_ = b->ring_->sq.ring_entries;
  b->ops_.reserve(b->capacity_);
  b->done_.reserve(b->capacity_);
  b->have_.reserve(b->capacity_);
  return b;
}

IoBatch::~IoBatch() {
  if (ring_) io_uring_queue_exit(ring_.get());
}

bool IoBatch::queue(const Op& op) {
  if (full()) return false;
  ops_.push_back(op);
  return true;
}

bool IoBatch::recv(int fd, void* buf, size_t len, uint64_t tag) {
  return queue({fd, false, buf, len, tag});
}

bool IoBatch::send(int fd, const void* buf, size_t len, uint64_t tag) {
  // io_uring's send takes a const buffer; the prep helper's parameter is not.
  return queue(
      {fd, true, const_cast<void*>(buf), len, tag});  // NOLINT(cppcoreguidelines-pro-type-const-cast)
}

void IoBatch::run_directly(size_t i) {
  const Op& op = ops_[i];
  ssize_t r = 0;
  do {
    r = op.send ? ::send(op.fd, op.buf, op.len, MSG_DONTWAIT | MSG_NOSIGNAL)
                : ::recv(op.fd, op.buf, op.len, MSG_DONTWAIT);
  } while (r < 0 && errno == EINTR);
  done_.push_back({op.tag, r < 0 ? -static_cast<ssize_t>(errno) : r});
}

bool IoBatch::take(io_uring_cqe* cqe) {
  const uint64_t i = io_uring_cqe_get_data64(cqe);
  const bool fresh = i < ops_.size() && have_[i] == 0;
  if (fresh) {
    have_[i] = 1;
    done_.push_back({ops_[i].tag, cqe->res});
  }
  io_uring_cqe_seen(ring_.get(), cqe);
  return fresh;
}

std::span<const IoBatch::Completion> IoBatch::run() {
  done_.clear();
  if (ops_.empty()) return done_;
  if (!ring_) {
    for (size_t i = 0; i < ops_.size(); ++i) run_directly(i);
    ops_.clear();
    return done_;
  }
  for (size_t i = 0; i < ops_.size(); ++i) {
    io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
    const Op& op = ops_[i];
    if (op.send) {
      io_uring_prep_send(sqe, op.fd, op.buf, op.len, MSG_DONTWAIT | MSG_NOSIGNAL);
    } else {
      io_uring_prep_recv(sqe, op.fd, op.buf, op.len, MSG_DONTWAIT);
    }
    io_uring_sqe_set_data64(sqe, i);
  }
  have_.assign(ops_.size(), 0);
  const auto want = static_cast<unsigned>(ops_.size());
  int rc = 0;
  do {
    rc = io_uring_submit_and_wait(ring_.get(), want);
  } while (rc == -EINTR);
  unsigned seen = 0;
  io_uring_cqe* cqe = nullptr;
  while (seen < want && io_uring_peek_cqe(ring_.get(), &cqe) == 0 && cqe != nullptr)
    seen += take(cqe) ? 1 : 0;
  if (rc >= 0) {
    // MSG_DONTWAIT operations complete inside the enter call; a straggler
    // is waited for all the same.
    while (seen < want) {
      const int w = io_uring_wait_cqe(ring_.get(), &cqe);
      if (w == -EINTR) continue;
      if (w != 0 || cqe == nullptr) break;
      seen += take(cqe) ? 1 : 0;
    }
  }
  if (seen < want) {
    // io_uring failed (e.g. ENOMEM). An operation it consumed completed
    // inside the call (checked by create()), so those without a completion
    // were never issued: do them one by one, and stop using the ring.
    io_uring_queue_exit(ring_.get());
    ring_.reset();
    failed_ = true;
    for (size_t i = 0; i < ops_.size(); ++i) {
      if (have_[i] == 0) run_directly(i);
    }
  } else {
    ++batches_;
    operations_ += want;
  }
  ops_.clear();
  return done_;
}

}  // namespace pgcloak::proxy
