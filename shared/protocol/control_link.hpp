// An established control connection (after the handshake): frames in order both ways, keepalive
// PINGs, and loss detection where any received frame counts as proof of life. Used by the
// supervisor (one per tunnel) and by the client.
// Invariant: frames are written whole and in order by a single writer; on_closed fires once.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include "shared/protocol/frame_io.hpp"

namespace culvert::shared::protocol {

class control_link : public std::enable_shared_from_this<control_link> {
 public:
  struct hooks {
    std::function<void(frame&&)> on_frame;  // every frame but PING
    std::function<void(const std::string& reason)> on_closed;
  };

  control_link(net::transport, std::chrono::milliseconds heartbeat_interval,
               std::chrono::milliseconds silence_limit);
  // Set after construction (they often need the link's own address), before start.
  void set_hooks(hooks h) { hooks_ = std::move(h); }
  void start();
  void send(encoded_frame);
  // Sends an ERROR frame, then closes (after a bounded wait for the write).
  void close_with_error(error_code, std::string message);
  void close(const std::string& reason);
  bool is_open() const { return open_; }
  // True once an ERROR is queued: the link closes by itself when it has gone out.
  bool closing() const { return closing_after_flush_; }
  std::string peer() const { return peer_; }

 private:
  boost::asio::awaitable<void> read_loop();
  boost::asio::awaitable<void> write_loop();
  boost::asio::awaitable<void> heartbeat_loop();

  net::transport socket_;
  std::chrono::milliseconds interval_, silence_limit_;
  hooks hooks_;
  std::string peer_;
  bool open_ = true;
  bool closing_after_flush_ = false;
  std::deque<encoded_frame> queue_;
  boost::asio::steady_timer writer_wake_, heartbeat_timer_;
  std::chrono::steady_clock::time_point last_received_;
  std::chrono::steady_clock::time_point ping_window_start_;
  unsigned pings_in_window_ = 0;
};

}  // namespace culvert::shared::protocol
