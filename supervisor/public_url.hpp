// The address a visitor uses to reach a tunnel, as the client prints it ("Forwarding ...").
// Supervisor only.
#pragma once

#include <string>

#include "supervisor/config.hpp"
#include "supervisor/tunnel.hpp"

namespace culvert::supervisor {

// http://DOMAIN:PORT for http tunnels; tcp://HOST:PORT for tcp ones, HOST being --public-host,
// else the bind address, else the base domain when bound to every address.
std::string public_url(const tunnel&, const config&);

}  // namespace culvert::supervisor
