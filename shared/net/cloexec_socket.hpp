// Listening and accepted TCP sockets that are close-on-exec from birth (SOCK_CLOEXEC, accept4).
// Asio opens with socket(2) and accepts with accept(2), which leave the flag off; the supervisor
// forks and execs workers, and a descriptor without the flag would reach every worker started
// after it (another tunnel's listener, the control port, other clients' connections).
// Used by the supervisor (control and public listeners) and the worker (visitors).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>
#include <tuple>

namespace culvert::shared::net {

// socket(SOCK_CLOEXEC), SO_REUSEADDR, bind, listen(backlog). On failure `error` names the call's
// error and the returned acceptor is closed.
boost::asio::ip::tcp::acceptor open_listener(boost::asio::io_context&,
                                             const boost::asio::ip::tcp::endpoint&, int backlog,
                                             boost::system::error_code& error);

// One connection from `listener`, accepted with accept4(SOCK_CLOEXEC | SOCK_NONBLOCK); waits for
// readability through Asio. Errors come back as values, like async_accept with as_tuple.
boost::asio::awaitable<std::tuple<boost::system::error_code, boost::asio::ip::tcp::socket>>
accept_cloexec(boost::asio::ip::tcp::acceptor& listener);

}  // namespace culvert::shared::net
