// OpenSSL set-up for control (certificate) and data (external PSK) connections, TLS 1.3 only.
#include "shared/tls/tls_contexts.hpp"

#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <cstring>
#include <stdexcept>
#include <string_view>

#include "shared/util/random.hpp"

namespace culvert::shared::tls {

namespace ssl = boost::asio::ssl;

namespace {

constexpr char psk_label[] = "culvert data connection key v1";
constexpr char route_tag_label[] = "culvert data route tag v1";
// TLS_AES_128_GCM_SHA256: every TLS 1.3 implementation has it; the PSK is bound to its hash.
constexpr unsigned char psk_cipher_id[2] = {0x13, 0x01};

std::string openssl_reason() {
  unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "unknown OpenSSL error";
  char text[256];
  ERR_error_string_n(code, text, sizeof(text));
  return text;
}

std::unique_ptr<ssl::context> tls13_context(ssl::context::method method) {
  auto context = std::make_unique<ssl::context>(method);
  SSL_CTX* native = context->native_handle();
  if (SSL_CTX_set_min_proto_version(native, TLS1_3_VERSION) != 1)
    throw std::runtime_error("cannot require TLS 1.3: " + openssl_reason());
  // No session tickets: nothing resumes, and a ticket would be one more secret in memory.
  SSL_CTX_set_num_tickets(native, 0);
  SSL_CTX_set_options(native, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
  return context;
}

SSL_SESSION* psk_session(SSL* ssl, const psk_bytes& key) {
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, psk_cipher_id);
  SSL_SESSION* session = SSL_SESSION_new();
  if (!cipher || !session || !SSL_SESSION_set1_master_key(session, key.data(), key.size()) ||
      !SSL_SESSION_set_cipher(session, cipher) ||
      !SSL_SESSION_set_protocol_version(session, TLS1_3_VERSION)) {
    SSL_SESSION_free(session);
    return nullptr;
  }
  return session;
}

// A PSK is bound to one hash; a server that picked a SHA-384 suite would ignore it (and, holding
// no certificate, fail). So data connections offer only the SHA-256 suites.
void psk_cipher_suites(ssl::context& context) {
  if (SSL_CTX_set_ciphersuites(context.native_handle(),
                               "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256") != 1)
    throw std::runtime_error("cannot set the TLS 1.3 cipher suites: " + openssl_reason());
}

// Per-connection PSK a client offers, kept in the SSL object's extra data.
struct offered_psk {
  std::string identity;
  psk_bytes key;
};

void free_offered(void*, void* item, CRYPTO_EX_DATA*, int, long, void*) {
  if (auto* p = static_cast<offered_psk*>(item)) {
    OPENSSL_cleanse(p->key.data(), p->key.size());
    delete p;
  }
}

int offered_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, free_offered);
  return index;
}

int use_session(SSL* ssl, const EVP_MD* md, const unsigned char** id, std::size_t* id_length,
                SSL_SESSION** session) {
  auto* offered = static_cast<offered_psk*>(SSL_get_ex_data(ssl, offered_index()));
  *session = nullptr;
  if (!offered) return 1;  // nothing to offer: the handshake will fail, as it should
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, psk_cipher_id);
  if (md && cipher && SSL_CIPHER_get_handshake_digest(cipher) != md) return 1;
  *session = psk_session(ssl, offered->key);
  if (!*session) return 0;
  *id = reinterpret_cast<const unsigned char*>(offered->identity.data());
  *id_length = offered->identity.size();
  return 1;
}

}  // namespace

namespace {
// HMAC-SHA256(secret, label): one secret, independent values for independent roles.
std::array<std::uint8_t, 32> derive(const protocol::secret_bytes& secret, std::string_view label) {
  std::array<std::uint8_t, 32> out{};
  unsigned int length = 0;
  if (!HMAC(EVP_sha256(), secret.data(), int(secret.size()),
            reinterpret_cast<const unsigned char*>(label.data()), label.size(), out.data(),
            &length) ||
      length != out.size())
    throw std::runtime_error("HMAC-SHA256 failed: " + openssl_reason());
  return out;
}
}  // namespace

psk_bytes derive_data_psk(const protocol::secret_bytes& secret) {
  return derive(secret, psk_label);
}

protocol::route_tag_bytes derive_route_tag(const protocol::secret_bytes& secret) {
  return derive(secret, route_tag_label);
}

std::string psk_identity(std::uint64_t tunnel_id) {
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(tunnel_id));
  return text;
}

std::unique_ptr<ssl::context> make_server_context(const std::string& cert_file,
                                                  const std::string& key_file) {
  auto context = tls13_context(ssl::context::tls_server);
  SSL_CTX* native = context->native_handle();
  if (SSL_CTX_use_certificate_chain_file(native, cert_file.c_str()) != 1)
    throw std::runtime_error("cannot load the TLS certificate " + cert_file + ": " +
                             openssl_reason());
  if (SSL_CTX_use_PrivateKey_file(native, key_file.c_str(), SSL_FILETYPE_PEM) != 1)
    throw std::runtime_error("cannot load the TLS private key " + key_file + ": " +
                             openssl_reason());
  if (SSL_CTX_check_private_key(native) != 1)
    throw std::runtime_error("the TLS private key " + key_file + " does not match " + cert_file);
  return context;
}

std::unique_ptr<ssl::context> make_client_context(const client_trust& trust) {
  auto context = tls13_context(ssl::context::tls_client);
  if (trust.insecure) {
    context->set_verify_mode(ssl::verify_none);
    return context;
  }
  context->set_verify_mode(ssl::verify_peer);
  boost::system::error_code ec;
  if (trust.ca_file.empty())
    context->set_default_verify_paths(ec);
  else
    context->load_verify_file(trust.ca_file, ec);
  if (ec)
    throw std::runtime_error("cannot load trusted certificates" +
                             (trust.ca_file.empty() ? std::string() : " from " + trust.ca_file) +
                             ": " + openssl_reason());
  return context;
}

void expect_server_name(SSL* ssl, const std::string& host) {
  SSL_set_tlsext_host_name(ssl, host.c_str());
  // An IP address must match an IP SAN; a name must match a DNS SAN.
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  if (X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) != 1) {
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size());
  }
}

// Where a PSK context finds its psk_server. Not SSL_CTX's app data: Asio keeps its verify
// callback there and deletes whatever it finds when the context is destroyed.
namespace {
int psk_server_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}
}  // namespace

psk_server::psk_server() : context_(tls13_context(ssl::context::tls_server)) {
  SSL_CTX* native = context_->native_handle();
  if (!SSL_CTX_set_ex_data(native, psk_server_index(), this))
    throw std::runtime_error("SSL_CTX_set_ex_data failed: " + openssl_reason());
  SSL_CTX_set_psk_find_session_callback(native, &psk_server::find_session);
  psk_cipher_suites(*context_);
}

void psk_server::set_psk(std::uint64_t tunnel_id, const psk_bytes& key) {
  identity_ = psk_identity(tunnel_id);
  key_ = key;
}

int psk_server::find_session(SSL* ssl, const unsigned char* identity, std::size_t identity_length,
                             SSL_SESSION** session) {
  *session = nullptr;
  auto* self =
      static_cast<psk_server*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), psk_server_index()));
  if (!self || !self->key_) return 1;
  // The identity is not secret (it names the tunnel); the key proves the client. A wrong key
  // fails the handshake's binder check inside OpenSSL, in constant time.
  const std::string_view offered(reinterpret_cast<const char*>(identity), identity_length);
  if (offered != self->identity_) return 1;  // unknown: no PSK, and with no certificate, no deal
  *session = psk_session(ssl, *self->key_);
  return *session ? 1 : 0;
}

std::unique_ptr<ssl::context> make_psk_client_context() {
  auto context = tls13_context(ssl::context::tls_client);
  context->set_verify_mode(ssl::verify_none);  // no certificate: the PSK authenticates the server
  SSL_CTX_set_psk_use_session_callback(context->native_handle(), use_session);
  psk_cipher_suites(*context);
  return context;
}

void offer_psk(SSL* ssl, std::uint64_t tunnel_id, const psk_bytes& key) {
  auto* offered = new offered_psk{psk_identity(tunnel_id), key};
  if (!SSL_set_ex_data(ssl, offered_index(), offered)) {
    delete offered;
    throw std::runtime_error("SSL_set_ex_data failed: " + openssl_reason());
  }
}

}  // namespace culvert::shared::tls
