// The multiplexer session's own life, worker and client alike: construction, the start of its
// reader, writer, keepalive and stream-idle coroutines, and close(). One duty per file besides:
// mux_reader (frames in), mux_writer (frames out), mux_relay (stream bytes by copy), mux_splice
// (by splice), mux_keepalive (PING, RTT, idle memory), mux_stream_lifecycle, window_tuner.
// Invariant: close() acts once, removing every stream, closing the connection and cancelling
// the timers, so that every coroutine of the session ends.
#include "shared/net/mux_session.hpp"

#include "shared/net/mux_stream.hpp"
#include "shared/net/socket_options.hpp"
#include "shared/net/spawn.hpp"

namespace culvert::shared::net {

mux_session::mux_session(transport connection, role r, mux_settings settings, mux_hooks hooks,
                         buffer_pool& pool, window_budget& windows)
    : connection_(std::move(connection)),
      role_(r),
      settings_(settings),
      hooks_(std::move(hooks)),
      pool_(pool),
      tuner_(settings.initial_window, settings.max_window, windows),
      writer_wake_(connection_.get_executor()),
      keepalive_timer_(connection_.get_executor()),
      stream_idle_timer_(connection_.get_executor()),
      splice_allowed_(!connection_.is_tls() && splice_enabled()) {}

mux_session::~mux_session() {
  for (auto& f : control_queue_) pool_.give(std::move(f.payload));
  for (auto& f : data_queue_) pool_.give(std::move(f.payload));
}

void mux_session::start() {
  set_nodelay(connection_.socket());
  error_code ec;
  connection_.socket().non_blocking(true, ec);
  last_received_ = clock_type::now();
  flood_window_start_ = last_received_;
  auto ex = connection_.get_executor();
  spawn(ex, read_loop(), "mux reader");
  spawn(ex, write_loop(), "mux writer");
  spawn(ex, keepalive_loop(), "mux keepalive");
  if (settings_.stream_idle_timeout.count() > 0) spawn(ex, stream_idle_loop(), "mux stream idle");
}

void mux_session::close(const std::string& reason) {
  if (!open_) return;
  open_ = false;
  close_reason_ = reason;
  std::vector<stream_ptr> all;
  all.reserve(streams_.size());
  for (auto& [id, s] : streams_) all.push_back(s);
  for (auto& s : all) remove_stream(s, true, "data connection closed: " + reason);
  connection_.close();
  writer_wake_.cancel();
  keepalive_timer_.cancel();
  stream_idle_timer_.cancel();
  if (auto hook = std::move(hooks_.on_closed)) hook(reason);
}

}  // namespace culvert::shared::net
