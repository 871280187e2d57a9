// Frame-aware copying of a relayed byte stream, for when policy must change
// some messages. Frames policy does not care about are copied to the output
// as they arrive, in runs as long as the input allows (conventions: forward
// on the header); frames policy asks for are held until complete and handed
// over whole (header included), and whatever the callback appends replaces
// them. However the stream is split, a held frame is never forwarded in
// part. Memory is bounded by the largest held frame (max_length).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "protocol/framing.h"
#include "protocol/result.h"
#include "protocol/wire.h"

namespace pgcloak::protocol {

enum class FrameAction { pass, hold, reject };

class FrameRelay {
 public:
  explicit FrameRelay(uint32_t max_length) : max_length_(max_length) {}

  // decide(type, length) -> FrameAction, once per header. on_frame(type,
  // Bytes whole_frame, Buffer& out) once per held frame. A reject (or a bad
  // length, 08P01) stops at that frame's first byte: nothing from it on is
  // copied, and `rejection` (or the framing error) is returned.
  template <class Decide, class OnFrame>
  Status feed(Bytes chunk, Buffer& out, Decide&& decide, OnFrame&& on_frame,
              const Error& rejection = Error{}) {
    const size_t n = chunk.size();
    size_t pos = 0;
    size_t run = 0;  // start of the pending pass-through run
    auto flush_run = [&](size_t upto) {
      if (upto > run)
        out.insert(out.end(), chunk.begin() + static_cast<std::ptrdiff_t>(run),
                   chunk.begin() + static_cast<std::ptrdiff_t>(upto));
      run = upto;
    };
    while (pos < n) {
      if (skip_ > 0) {
        const auto take = static_cast<size_t>(std::min<uint64_t>(skip_, n - pos));
        pos += take;
        skip_ -= take;
        continue;
      }
      if (holding_) {
        const size_t take = std::min(held_need_ - held_.size(), n - pos);
        held_.insert(held_.end(), chunk.begin() + static_cast<std::ptrdiff_t>(pos),
                     chunk.begin() + static_cast<std::ptrdiff_t>(pos + take));
        pos += take;
        run = pos;
        if (held_.size() == held_need_) {
          holding_ = false;
          on_frame(held_[0], Bytes(held_), out);
        }
        continue;
      }
      // A header: in place when whole, else gathered across chunks (and not
      // forwarded until we know whether its frame is held).
      const uint8_t* hdr = nullptr;
      size_t hdr_start = pos;
      if (header_len_ == 0 && n - pos >= 5) {
        hdr = chunk.data() + pos;
        pos += 5;
      } else {
        flush_run(pos);
        const size_t take = std::min<size_t>(5 - header_len_, n - pos);
        std::memcpy(header_ + header_len_, chunk.data() + pos, take);
        header_len_ += take;
        pos += take;
        run = pos;
        if (header_len_ < 5) break;
        header_len_ = 0;
        hdr = header_;
        hdr_start = SIZE_MAX;  // not in this chunk
      }
      HeaderResult h = decode_header(Bytes(hdr, 5), max_length_);
      if (h.status == FrameStatus::error) {
        if (hdr_start != SIZE_MAX) flush_run(hdr_start);
        return std::move(h.error);
      }
      const uint8_t type = h.header.type;
      const uint32_t body = h.header.body_size();
      switch (decide(type, h.header.length)) {
        case FrameAction::reject:
          if (hdr_start != SIZE_MAX) flush_run(hdr_start);
          return rejection;
        case FrameAction::pass:
          if (hdr_start == SIZE_MAX) out.insert(out.end(), header_, header_ + 5);
          skip_ = body;
          continue;
        case FrameAction::hold: break;
      }
      if (hdr_start != SIZE_MAX) {
        flush_run(hdr_start);
        if (n - pos >= body) {  // common case: the whole frame is in this chunk
          pos += body;
          run = pos;
          on_frame(type, chunk.subspan(hdr_start, 5 + body), out);
          continue;
        }
      }
      held_.assign(hdr, hdr + 5);
      held_need_ = size_t{5} + body;
      holding_ = held_.size() < held_need_;
      run = pos;
      if (!holding_) on_frame(type, Bytes(held_), out);  // a bodiless frame
    }
    flush_run(pos);
    return ok_status();
  }

  // True between frames.
  bool at_boundary() const { return skip_ == 0 && !holding_ && header_len_ == 0; }
  // True when what went to `out` so far ends at a frame boundary: nothing
  // of a held frame or of a header still being gathered is written before
  // its frame is decided. Bytes appended to `out` now (outside feed) sit
  // between frames.
  bool output_at_boundary() const { return skip_ == 0; }

 private:
  uint32_t max_length_;
  uint8_t header_[5] = {};
  size_t header_len_ = 0;
  uint64_t skip_ = 0;
  bool holding_ = false;
  Buffer held_;
  size_t held_need_ = 0;
};

}  // namespace pgcloak::protocol
