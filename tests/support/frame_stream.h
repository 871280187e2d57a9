// Feeds bytes to the framing decoders in whatever chunks a test chooses, the
// way a socket delivers them, and collects each frame once it is complete.
// Split-buffer and coalesced-buffer tests use it to check that where a read
// boundary falls never changes what is decoded.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "protocol/framing.h"
#include "tests/support/raw_message.h"

namespace pgcloak::testing {

class FrameStream {
 public:
  enum class Kind { typed, startup };

  explicit FrameStream(Kind kind = Kind::typed, uint32_t max_length = protocol::default_max_message_length)
      : kind_(kind), max_length_(max_length) {}

  // Appends a chunk; returns the frames it completed, whole (header and body).
  std::vector<Buffer> feed(std::span<const uint8_t> chunk) {
    std::vector<Buffer> done;
    pending_.insert(pending_.end(), chunk.begin(), chunk.end());
    while (!failed_) {
      protocol::FrameResult r = kind_ == Kind::typed ? protocol::decode_frame(pending_, max_length_)
                                                     : protocol::decode_startup_frame(pending_, max_length_);
      if (r.status == protocol::FrameStatus::need_more) break;
      if (r.status == protocol::FrameStatus::error) {
        failed_ = true;
        break;
      }
      auto size = static_cast<std::ptrdiff_t>(r.frame.size());
      done.emplace_back(pending_.begin(), pending_.begin() + size);
      pending_.erase(pending_.begin(), pending_.begin() + size);
    }
    return done;
  }

  bool failed() const { return failed_; }
  size_t pending() const { return pending_.size(); }

 private:
  Kind kind_;
  uint32_t max_length_;
  Buffer pending_;
  bool failed_ = false;
};

// Checks that `messages`, sent back to back, come out as the same frames
// however the stream is cut: one byte at a time (each frame must complete
// exactly on its last byte and not before), and split in two at every
// offset. Returns "" on success, else what went wrong, for EXPECT_EQ(..., "").
inline std::string check_splits(const std::vector<Buffer>& messages,
                                FrameStream::Kind kind = FrameStream::Kind::typed) {
  Buffer all;
  std::vector<size_t> ends;  // offset just past each message
  for (const auto& m : messages) {
    all.insert(all.end(), m.begin(), m.end());
    ends.push_back(all.size());
  }

  FrameStream one(kind);
  std::vector<Buffer> got;
  for (size_t i = 0; i < all.size(); ++i) {
    auto done = one.feed(std::span<const uint8_t>(&all[i], 1));
    for (auto& f : done) {
      if (got.size() >= ends.size() || ends[got.size()] != i + 1) {
        return "byte-at-a-time: a frame completed after byte " + std::to_string(i + 1);
      }
      got.push_back(std::move(f));
    }
  }
  if (one.failed()) return "byte-at-a-time: framing error";
  if (got != messages) return "byte-at-a-time: frames differ from the messages sent";

  std::span<const uint8_t> whole(all);
  for (size_t split = 0; split <= all.size(); ++split) {
    FrameStream two(kind);
    auto frames = two.feed(whole.first(split));
    for (auto& f : two.feed(whole.subspan(split))) frames.push_back(std::move(f));
    if (two.failed() || frames != messages || two.pending() != 0) {
      return "split at " + std::to_string(split) + ": frames differ from the messages sent";
    }
  }
  return "";
}

}  // namespace pgcloak::testing
