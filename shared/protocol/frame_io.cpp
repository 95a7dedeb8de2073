// Whole-frame reads with header validation before the payload is read or allocated.
#include "shared/protocol/frame_io.hpp"

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

namespace culvert::shared::protocol {

namespace asio = boost::asio;
using namespace boost::asio::experimental::awaitable_operators;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

asio::awaitable<read_result> read_frame(net::transport& stream, frame_limits limits) {
  std::array<std::uint8_t, header_size> head;
  auto [ec, n] = co_await stream.read_exactly(asio::buffer(head));
  if (ec && n == 0 && net::peer_closed(ec))
    co_return read_failure{read_failure::kind::closed, "connection closed"};
  if (ec == asio::error::eof)
    co_return read_failure{read_failure::kind::malformed, "truncated frame"};
  if (ec) co_return read_failure{read_failure::kind::io_error, net::describe_tls_error(ec)};
  auto decoded = decode_header(std::span<const std::uint8_t, header_size>(head));
  if (auto* e = std::get_if<decode_error>(&decoded))
    co_return read_failure{read_failure::kind::malformed, std::string(to_string(*e))};
  frame f{std::get<frame_header>(decoded), {}};
  if (!limits.accepted.empty() && std::find(limits.accepted.begin(), limits.accepted.end(),
                                            f.header.type) == limits.accepted.end())
    co_return read_failure{read_failure::kind::malformed,
                           "unexpected " + std::string(to_string(f.header.type)) + " frame"};
  if (f.header.length > limits.max_payload)
    co_return read_failure{read_failure::kind::malformed,
                           std::string(to_string(f.header.type)) + " frame of " +
                               std::to_string(f.header.length) + " bytes, more than the " +
                               std::to_string(limits.max_payload) + " allowed here"};
  f.payload.resize(f.header.length);
  if (f.header.length > 0) {
    auto [ec2, n2] = co_await stream.read_exactly(asio::buffer(f.payload));
    if (ec2 == asio::error::eof)
      co_return read_failure{read_failure::kind::malformed, "truncated frame"};
    if (ec2) co_return read_failure{read_failure::kind::io_error, net::describe_tls_error(ec2)};
  }
  co_return f;
}

asio::awaitable<read_result> read_frame(net::transport& stream,
                                        std::chrono::steady_clock::duration limit,
                                        frame_limits limits) {
  asio::steady_timer timer(stream.get_executor(), limit);
  auto outcome = co_await (read_frame(stream, limits) || timer.async_wait(use_tuple));
  // Asio flattens `variant<A, B> || C` into variant<A, B, C>: pick by type, never by index.
  co_return std::visit(
      [](auto&& value) -> read_result {
        using value_type = std::decay_t<decltype(value)>;
        if constexpr (std::is_same_v<value_type, std::tuple<boost::system::error_code>>)
          return read_failure{read_failure::kind::timed_out, "timed out"};
        else
          return read_result(std::move(value));
      },
      std::move(outcome));
}

asio::awaitable<boost::system::error_code> write_frame(net::transport& stream,
                                                       const encoded_frame& frame) {
  auto [ec, n] = co_await stream.write(asio::buffer(frame));
  co_return ec;
}

asio::awaitable<void> refuse(net::transport& stream, error_code code, std::string message) {
  auto frame = encode(error_message{code, std::move(message)});
  asio::steady_timer timer(stream.get_executor(), std::chrono::seconds(2));
  co_await (write_frame(stream, frame) || timer.async_wait(use_tuple));
  stream.shutdown_send();
  // Read and drop what the peer still sends until its FIN (briefly): closing with unread input
  // would send a RST, which can destroy the ERROR before the peer reads it.
  timer.expires_after(std::chrono::seconds(1));
  auto drain = [&stream]() -> asio::awaitable<void> {
    std::array<std::uint8_t, 4096> sink;
    for (int i = 0; i < 64; ++i) {
      auto [ec, n] = co_await stream.read_some(asio::buffer(sink));
      if (ec) co_return;
    }
  };
  co_await (drain() || timer.async_wait(use_tuple));
  stream.close();
}

}  // namespace culvert::shared::protocol
