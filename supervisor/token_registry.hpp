// The tokens the supervisor accepts, each with its own policy (tunnel limit, subdomain patterns,
// reserved names), from a --tokens-file or from --token flags. Runs in the supervisor.
// Invariant: only SHA-256 digests of the secrets are kept in memory, and authenticate() takes the
// same time whichever entry matches, or none; a policy pointer lives as long as its registry.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/util/secrets.hpp"

namespace culvert::supervisor {

struct token_policy {
  std::string name;  // for logs and status; never the secret
  std::uint32_t max_tunnels = 0;
  std::vector<std::string> subdomains{"*"};  // lowercase glob patterns, '*' = any run of chars
  std::vector<std::string> reserved;         // lowercase labels only this token may have
};

class token_registry {
 public:
  static constexpr std::size_t min_secret_bytes = shared::util::min_token_bytes;  // everywhere
  static constexpr std::size_t max_secret_bytes = shared::util::max_token_bytes;  // INIT's limit
  static constexpr std::size_t max_name_chars = 64;
  static constexpr std::size_t max_file_bytes = 1 << 20;
  // The one message for every refused token: missing, wrong, or malformed look alike.
  static constexpr std::string_view refusal = "the token is missing or not valid";

  // No tokens: open() is true and authenticate() accepts anything as the anonymous policy.
  token_registry();
  // A registry hands out pointers into itself: moving keeps them valid, copying would not.
  token_registry(token_registry&&) = default;
  token_registry& operator=(token_registry&&) = default;
  token_registry(const token_registry&) = delete;
  token_registry& operator=(const token_registry&) = delete;

  // Reads and checks a tokens file (format in docs and token_registry.cpp). Refuses (throws
  // config_error) a file that is not a regular file, that group or others may read or write, or
  // that is owned by anyone but the running user or root (shared::util::check_secret_file, the
  // rule for every file of secrets). `warnings` is kept for callers; nothing is only a warning.
  static token_registry load_file(const std::string& path, std::uint32_t default_max_tunnels,
                                  std::vector<std::string>* warnings = nullptr);
  // The same format from text; errors read "SOURCE: line L: message" (config_error).
  static token_registry parse(std::string_view toml_text, const std::string& source_name,
                              std::uint32_t default_max_tunnels);
  // The --token flags: "token-1", "token-2", ..., each allowed max_tunnels_each tunnels and
  // any name. A token given twice counts once.
  static token_registry from_tokens(const std::vector<std::string>& tokens,
                                    std::uint32_t max_tunnels_each);

  bool open() const { return entries_.empty(); }
  std::size_t size() const { return entries_.size(); }
  // The entry whose secret is `presented`, or nullptr. An open registry returns its anonymous
  // policy (named "anonymous", no per-token tunnel limit) for anything.
  const token_policy* authenticate(std::string_view presented) const;
  // nullopt if `who` may have `label` (case-insensitive): the label is one of its own reserved
  // names, or matches one of its patterns and is not reserved by another token. An empty label
  // (a generated name) is allowed only to tokens with the pattern "*". Else a message that is
  // safe to send to that client.
  std::optional<std::string> check_requested_name(const token_policy* who,
                                                  std::string_view label) const;
  // For generated names: true if some token other than `who` reserved `label`.
  bool reserved_by_other(const token_policy* who, std::string_view label) const;
  bool is_reserved(std::string_view label) const;         // by any token
  const token_policy* find(std::string_view name) const;  // by policy name, for status

 private:
  using digest = std::array<std::uint8_t, 32>;
  struct entry {
    token_policy policy;
    digest hash{};
  };

  void add(token_policy, const digest&, const std::string& where);

  std::vector<entry> entries_;  // a vector's elements keep their address when it is moved
  std::unique_ptr<const token_policy> anonymous_;  // on the heap for the same reason
};

// '*' matches any run (also empty) of characters; everything else matches itself. Exposed for
// tests; both sides are expected lowercase.
bool glob_match(std::string_view pattern, std::string_view text);

}  // namespace culvert::supervisor
