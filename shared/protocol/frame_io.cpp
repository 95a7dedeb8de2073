// Whole-frame reads with header validation before the payload is read or allocated.
#include "shared/protocol/frame_io.hpp"

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

asio::awaitable<read_result> read_frame(asio::ip::tcp::socket& socket) {
  std::array<std::uint8_t, header_size> head;
  auto [ec, n] = co_await asio::async_read(socket, asio::buffer(head), use_tuple);
  if (ec == asio::error::eof && n == 0) co_return read_failure{read_failure::kind::closed, "connection closed"};
  if (ec == asio::error::eof) co_return read_failure{read_failure::kind::malformed, "truncated frame"};
  if (ec) co_return read_failure{read_failure::kind::io_error, ec.message()};
  auto decoded = decode_header(std::span<const std::uint8_t, header_size>(head));
  if (auto* e = std::get_if<decode_error>(&decoded))
    co_return read_failure{read_failure::kind::malformed, std::string(to_string(*e))};
  frame f{std::get<frame_header>(decoded), {}};
  f.payload.resize(f.header.length);
  if (f.header.length > 0) {
    auto [ec2, n2] = co_await asio::async_read(socket, asio::buffer(f.payload), use_tuple);
    if (ec2 == asio::error::eof) co_return read_failure{read_failure::kind::malformed, "truncated frame"};
    if (ec2) co_return read_failure{read_failure::kind::io_error, ec2.message()};
  }
  co_return f;
}

asio::awaitable<read_result> read_frame(asio::ip::tcp::socket& socket,
                                        std::chrono::steady_clock::duration limit) {
  asio::steady_timer timer(socket.get_executor(), limit);
  auto outcome = co_await (read_frame(socket) || timer.async_wait(use_tuple));
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

asio::awaitable<boost::system::error_code> write_frame(asio::ip::tcp::socket& socket,
                                                       const encoded_frame& frame) {
  auto [ec, n] = co_await asio::async_write(socket, asio::buffer(frame), use_tuple);
  co_return ec;
}

asio::awaitable<void> refuse(asio::ip::tcp::socket& socket, error_code code, std::string message) {
  auto frame = encode(error_message{code, std::move(message)});
  asio::steady_timer timer(socket.get_executor(), std::chrono::seconds(2));
  co_await (write_frame(socket, frame) || timer.async_wait(use_tuple));
  boost::system::error_code ignored;
  socket.shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
  socket.close(ignored);
}

}  // namespace culvert::shared::protocol
