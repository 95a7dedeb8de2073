// Control connection: reader, single writer, heartbeat.
#include "shared/protocol/control_link.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "shared/net/address.hpp"
#include "shared/net/socket_options.hpp"
#include "shared/net/spawn.hpp"

namespace culvert::shared::protocol {

namespace asio = boost::asio;
using clock_type = std::chrono::steady_clock;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
constexpr unsigned max_pings_per_second = 20;

control_link::control_link(net::transport socket, std::chrono::milliseconds interval,
                           std::chrono::milliseconds silence_limit)
    : socket_(std::move(socket)),
      interval_(interval),
      silence_limit_(silence_limit),
      writer_wake_(socket_.get_executor()),
      heartbeat_timer_(socket_.get_executor()) {
  boost::system::error_code ec;
  auto endpoint = socket_.socket().remote_endpoint(ec);
  peer_ = ec ? "?" : net::to_string(endpoint);
}

void control_link::start() {
  net::set_nodelay(socket_.socket());
  last_received_ = ping_window_start_ = clock_type::now();
  auto ex = socket_.get_executor();
  net::spawn(ex, read_loop(), "control reader");
  net::spawn(ex, write_loop(), "control writer");
  net::spawn(ex, heartbeat_loop(), "control heartbeat");
}

void control_link::send(encoded_frame frame) {
  if (!open_ || closing_after_flush_) return;
  queue_.push_back(std::move(frame));
  writer_wake_.cancel();
}

void control_link::close_with_error(error_code code, std::string message) {
  if (!open_ || closing_after_flush_) return;
  queue_.push_back(encode(error_message{code, std::move(message)}));
  closing_after_flush_ = true;
  writer_wake_.cancel();
  // A peer that does not read gets no more than the heartbeat interval to take the frame.
  heartbeat_timer_.expires_after(interval_);
  heartbeat_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
    if (!ec) self->close("error sent");
  });
}

void control_link::close(const std::string& reason) {
  if (!open_) return;
  open_ = false;
  // Shut down before closing: if a copy of the descriptor lives on elsewhere (a child that
  // inherited it), close alone would leave the connection open and the peer waiting.
  boost::system::error_code ignored;
  socket_.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  socket_.close();
  writer_wake_.cancel();
  heartbeat_timer_.cancel();
  if (auto hook = std::move(hooks_.on_closed)) hook(reason);
}

asio::awaitable<void> control_link::read_loop() {
  auto self = shared_from_this();
  while (open_) {
    // Only control frames travel here: a larger announced length is refused at the header.
    auto result = co_await read_frame(socket_, {.max_payload = max_control_payload});
    if (!open_) co_return;
    if (closing_after_flush_) {  // an ERROR is on its way out: only wait for the peer's end
      if (std::holds_alternative<read_failure>(result)) close("error sent");
      continue;
    }
    if (auto* failure = std::get_if<read_failure>(&result)) {
      if (failure->why == read_failure::kind::malformed) {
        close_with_error(error_code::protocol_error, failure->what);
        co_return;
      }
      close(failure->why == read_failure::kind::closed ? "connection closed by peer"
                                                       : "connection lost: " + failure->what);
      co_return;
    }
    auto& f = std::get<frame>(result);
    const auto now = clock_type::now();
    last_received_ = now;
    if (f.header.type == frame_type::ping) {
      if (f.header.flags & flags::ack) continue;
      if (now - ping_window_start_ >= std::chrono::seconds(1)) {
        ping_window_start_ = now;
        pings_in_window_ = 0;
      }
      if (++pings_in_window_ > max_pings_per_second) {
        close_with_error(error_code::protocol_error, "PING flood");
        co_return;
      }
      f.header.flags = flags::ack;
      encoded_frame echo(header_size + f.payload.size());
      encode_header(f.header, std::span<std::uint8_t, header_size>(echo.data(), header_size));
      std::copy(f.payload.begin(), f.payload.end(), echo.begin() + header_size);
      send(std::move(echo));
      continue;
    }
    if (hooks_.on_frame) hooks_.on_frame(std::move(f));
  }
}

asio::awaitable<void> control_link::write_loop() {
  auto self = shared_from_this();
  while (open_) {
    if (queue_.empty()) {
      if (closing_after_flush_) {
        // FIN after the ERROR; the reader closes on the peer's end (or the timer does), since
        // closing with unread input would reset the connection and could destroy the ERROR.
        socket_.shutdown_send();
        co_return;
      }
      writer_wake_.expires_at(clock_type::time_point::max());
      co_await writer_wake_.async_wait(use_tuple);
      continue;
    }
    auto [ec, n] = co_await socket_.write(asio::buffer(queue_.front()));
    if (!open_) co_return;
    if (ec) {
      close("write failed: " + ec.message());
      co_return;
    }
    queue_.pop_front();
  }
}

asio::awaitable<void> control_link::heartbeat_loop() {
  auto self = shared_from_this();
  while (open_ && !closing_after_flush_) {
    heartbeat_timer_.expires_after(interval_);
    auto [ec] = co_await heartbeat_timer_.async_wait(use_tuple);
    if (ec || !open_ || closing_after_flush_) co_return;
    const auto silent = clock_type::now() - last_received_;
    if (silent > silence_limit_) {
      close("heartbeat timeout: nothing received for " +
            std::to_string(std::chrono::duration_cast<std::chrono::seconds>(silent).count()) +
            " s");
      co_return;
    }
    encoded_frame ping(header_size + 8, 0);
    encode_header({8, frame_type::ping, flags::none, 0},
                  std::span<std::uint8_t, header_size>(ping.data(), header_size));
    send(std::move(ping));
  }
}

}  // namespace culvert::shared::protocol
