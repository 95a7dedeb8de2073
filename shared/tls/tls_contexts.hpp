// TLS 1.3 contexts for culvert's two kinds of connection.
// - Control connections: the supervisor presents a certificate; the client verifies it against
//   the system store or a given CA file, and the server's name.
// - Data connections: TLS 1.3 with an external pre-shared key (RFC 8446 section 2.2, with
//   ephemeral Diffie-Hellman for forward secrecy), derived from the tunnel's secret. The worker
//   terminates them, so the internet-facing worker never holds the certificate's private key.
// Used by the supervisor, the worker and the client. Every failure throws with a readable text.
#pragma once

#include <openssl/ssl.h>

#include <array>
#include <boost/asio/ssl/context.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "shared/protocol/messages.hpp"

namespace culvert::shared::tls {

using psk_bytes = std::array<std::uint8_t, 32>;

// The data connections' key for one tunnel: HMAC-SHA256(secret, label), so the same secret is
// never used directly in two roles (reclaim and data-channel key).
psk_bytes derive_data_psk(const protocol::secret_bytes& secret);
// The tag a TLS data connection's DATA_ROUTE carries: HMAC-SHA256(secret, another label), so it
// names the tunnel to the supervisor and tells nothing about the secret or the data key.
protocol::route_tag_bytes derive_route_tag(const protocol::secret_bytes& secret);
// The PSK identity a client presents: the tunnel id, as 16 hex digits.
std::string psk_identity(std::uint64_t tunnel_id);

// Supervisor: certificate chain and private key from PEM files.
std::unique_ptr<boost::asio::ssl::context> make_server_context(const std::string& cert_file,
                                                               const std::string& key_file);

struct client_trust {
  std::string ca_file;    // empty: the system's default store
  bool insecure = false;  // skip verification entirely (development only)
};
// Client: verifies the server's certificate chain; the host name is checked per connection.
std::unique_ptr<boost::asio::ssl::context> make_client_context(const client_trust&);
// Sets SNI and the host name the certificate must match on one client connection.
void expect_server_name(SSL* ssl, const std::string& host);

// Worker: accepts only the PSK of its tunnel (set with set_psk before the first handshake).
class psk_server {
 public:
  psk_server();
  psk_server(const psk_server&) = delete;  // its context points back at it
  psk_server& operator=(const psk_server&) = delete;
  void set_psk(std::uint64_t tunnel_id, const psk_bytes&);
  bool has_psk() const { return key_.has_value(); }
  boost::asio::ssl::context& context() { return *context_; }

 private:
  static int find_session(SSL*, const unsigned char* identity, std::size_t identity_length,
                          SSL_SESSION** session);
  std::unique_ptr<boost::asio::ssl::context> context_;
  std::string identity_;
  std::optional<psk_bytes> key_;
};

// Client: a context for data connections; offer_psk arms one connection with the tunnel's key.
std::unique_ptr<boost::asio::ssl::context> make_psk_client_context();
void offer_psk(SSL* ssl, std::uint64_t tunnel_id, const psk_bytes&);

}  // namespace culvert::shared::tls
