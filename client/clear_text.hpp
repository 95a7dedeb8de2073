// Whether the culvert CLI may talk to its server in clear text without being told to: only when
// the traffic cannot leave this machine, that is when the server is a loopback address or a name
// whose every address is loopback. A name alone ("*.localhost") proves nothing: a resolver may
// map it anywhere. Runs in the culvert CLI, once at start (and the check again at each connect).
#pragma once

#include <boost/asio/ip/address.hpp>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace culvert::client {

// The addresses a name resolves to; nullopt when it does not resolve.
using resolve_function =
    std::function<std::optional<std::vector<boost::asio::ip::address>>(const std::string& host)>;

// getaddrinfo (blocking; called once, before the io_context runs).
std::optional<std::vector<boost::asio::ip::address>> resolve_addresses(const std::string& host);

// True for a loopback literal, or a name that resolves to at least one address, all loopback.
// A name that does not resolve, or resolves to any other address, gets TLS like any server.
bool stays_on_this_machine(const std::string& host,
                           const resolve_function& resolve = resolve_addresses);

}  // namespace culvert::client
