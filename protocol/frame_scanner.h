// Incremental frame-boundary tracking for relayed streams. The proxy forwards
// bytes as they arrive (conventions: forward on the header) and only needs to
// see the bodies of a few message types; this walks arbitrary chunks, checks
// every header, and reassembles just the bodies the caller asks for, however
// the stream happens to be split. Memory is bounded by the largest body asked
// for, which the caller caps with max_length.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "protocol/framing.h"
#include "protocol/result.h"
#include "protocol/wire.h"

namespace pgcloak::protocol {

class FrameScanner {
 public:
  explicit FrameScanner(uint32_t max_length) : max_length_(max_length) {}

  // Calls needs_body(type, length) once per frame header; when it returns
  // true, on_frame(type, length, &body) is called once the whole body has
  // arrived, otherwise on_frame(type, length, nullptr) is called at once and
  // the body is skipped. Returns an 08P01 error for a bad length; the stream
  // is unusable after that.
  template <class NeedsBody, class OnFrame>
  Status scan(Bytes chunk, NeedsBody&& needs_body, OnFrame&& on_frame) {
    size_t pos = 0;
    const size_t n = chunk.size();
    while (pos < n) {
      if (skip_ > 0) {
        size_t take = static_cast<size_t>(std::min<uint64_t>(skip_, n - pos));
        pos += take;
        skip_ -= take;
        continue;
      }
      if (collecting_) {
        size_t take = std::min(body_need_ - body_.size(), n - pos);
        body_.insert(body_.end(), chunk.begin() + pos, chunk.begin() + pos + take);
        pos += take;
        if (body_.size() == body_need_) {
          collecting_ = false;
          Bytes body(body_);
          on_frame(type_, body_need_ + 4, &body);
        }
        continue;
      }
      // Header: straight from the chunk when whole, else via the carry.
      const uint8_t* hdr = nullptr;
      if (header_len_ == 0 && n - pos >= 5) {
        hdr = chunk.data() + pos;
        pos += 5;
      } else {
        size_t take = std::min<size_t>(5 - header_len_, n - pos);
        std::memcpy(header_ + header_len_, chunk.data() + pos, take);
        header_len_ += take;
        pos += take;
        if (header_len_ < 5) break;
        header_len_ = 0;
        hdr = header_;
      }
      HeaderResult h = decode_header(Bytes(hdr, 5), max_length_);
      if (h.status == FrameStatus::error) return std::move(h.error);
      const uint8_t type = h.header.type;
      const uint32_t body_size = h.header.body_size();
      if (!needs_body(type, h.header.length)) {
        on_frame(type, h.header.length, static_cast<const Bytes*>(nullptr));
        skip_ = body_size;
        continue;
      }
      if (n - pos >= body_size) {  // common case: whole body in this chunk
        Bytes body = chunk.subspan(pos, body_size);
        pos += body_size;
        on_frame(type, h.header.length, &body);
        continue;
      }
      collecting_ = true;
      type_ = type;
      body_need_ = body_size;
      body_.clear();
    }
    return ok_status();
  }

  // True between frames: nothing of a frame has been seen without its end.
  bool at_boundary() const { return skip_ == 0 && !collecting_ && header_len_ == 0; }

 private:
  uint32_t max_length_;
  uint8_t header_[5] = {};
  size_t header_len_ = 0;
  uint64_t skip_ = 0;
  bool collecting_ = false;
  uint8_t type_ = 0;
  size_t body_need_ = 0;
  Buffer body_;
};

}  // namespace pgcloak::protocol
