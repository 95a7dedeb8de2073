// The token registry (see token_registry.hpp): parses and checks the tokens file, hashes every
// secret with SHA-256 at load time, and answers "who is this?" and "may they have this name?".
// Runs in the supervisor, single-threaded. Invariant: a secret from the file or a flag is hashed
// and dropped before the registry is returned; errors name entries, never secrets.
//
// Tokens file format (TOML), one [[token]] table per client or team:
//   [[token]]
//   name = "alice"            # required, unique; shown in logs and status
//   token = "..."             # the secret, 16-255 bytes; or sha256 = "<64 hex>" of it instead
//   max_tunnels = 5           # optional; default --max-tunnels-per-token
//   subdomains = ["alice-*"]  # optional; default ["*"]
//   reserved = ["alice"]      # optional; names only this token may have
#include "supervisor/token_registry.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "shared/log/printable.hpp"
#include "shared/util/secrets.hpp"
#include "supervisor/config.hpp"
#include "supervisor/domain_pool.hpp"

namespace culvert::supervisor {

namespace {

// What a client or the operator sent, made safe to print: printable ASCII, at most 80 bytes.
std::string shown(std::string_view value) {
  return "'" + shared::log::printable(value, 80) + "'";
}

std::string to_lower(std::string_view text) {
  std::string out(text);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return out;
}

std::array<std::uint8_t, 32> sha256(std::string_view data) {
  std::array<std::uint8_t, 32> out{};
  unsigned int length = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &length, EVP_sha256(), nullptr) != 1 ||
      length != out.size()) {
    // Without a working SHA-256 no token can be checked: accepting or refusing all would be wrong.
    std::fprintf(stderr, "culvert: EVP_Digest(SHA-256) failed; OpenSSL is broken\n");
    std::abort();
  }
  return out;
}

std::optional<std::array<std::uint8_t, 32>> parse_hex_digest(std::string_view hex) {
  if (hex.size() != 64) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::array<std::uint8_t, 32> out{};
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int high = nibble(hex[2 * i]), low = nibble(hex[2 * i + 1]);
    if (high < 0 || low < 0) return std::nullopt;
    out[i] = std::uint8_t(high << 4 | low);
  }
  return out;
}

bool valid_name(std::string_view name) {
  return !name.empty() && name.size() <= token_registry::max_name_chars &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == '.' || c == '@';
         });
}

bool valid_pattern(std::string_view pattern) {
  return !pattern.empty() && pattern.size() <= 63 &&
         std::all_of(pattern.begin(), pattern.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '*';
         });
}

std::string at(const std::string& source, const toml::node& node) {
  return source + ": line " + std::to_string(node.source().begin.line) + ": ";
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// An array of strings, lowercased, each checked by `check` (nullopt = fine).
template <typename Check>
std::vector<std::string> string_list(const toml::node& node, const std::string& source,
                                     const std::string& key, Check check) {
  const auto* list = node.as_array();
  if (!list) throw config_error(at(source, node) + key + " must be an array of strings");
  std::vector<std::string> out;
  for (std::size_t i = 0; i < list->size(); ++i) {
    const toml::node& item = *list->get(i);
    const std::string item_key = key + "[" + std::to_string(i) + "]";
    const auto* text = item.as_string();
    if (!text) throw config_error(at(source, item) + item_key + " must be a string");
    std::string value = to_lower(text->get());
    if (auto why = check(value)) throw config_error(at(source, item) + item_key + " " + *why);
    if (std::find(out.begin(), out.end(), value) == out.end()) out.push_back(std::move(value));
  }
  return out;
}

std::string read_checked(const std::string& path) {
  try {
    return shared::util::read_secret_file("tokens file", path, token_registry::max_file_bytes);
  } catch (const shared::util::secret_file_error& e) {
    throw config_error(e.what());
  }
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view text) {
  // Greedy with one backtrack point (the last '*'): linear enough for 63-character labels.
  std::size_t p = 0, t = 0, star = std::string_view::npos, resume = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      resume = t;
    } else if (p < pattern.size() && pattern[p] == text[t]) {
      ++p;
      ++t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

token_registry::token_registry()
    : anonymous_(std::make_unique<const token_policy>(
          token_policy{"anonymous", limits::max_tunnels, {"*"}, {}})) {}

void token_registry::add(token_policy policy, const digest& hash, const std::string& where) {
  for (const entry& other : entries_) {
    if (other.policy.name == policy.name)
      throw config_error(where + "name " + shown(policy.name) +
                         " is already used by another token");
    if (CRYPTO_memcmp(other.hash.data(), hash.data(), hash.size()) == 0)
      throw config_error(where + "token " + shown(policy.name) + " has the same secret as " +
                         shown(other.policy.name));
    for (const std::string& name : policy.reserved)
      if (std::find(other.policy.reserved.begin(), other.policy.reserved.end(), name) !=
          other.policy.reserved.end())
        throw config_error(where + "reserved name " + shown(name) + " of " + shown(policy.name) +
                           " is already reserved by " + shown(other.policy.name));
  }
  entries_.push_back({std::move(policy), hash});
}

token_registry token_registry::parse(std::string_view toml_text, const std::string& source,
                                     std::uint32_t default_max_tunnels) {
  toml::table root;
  try {
    root = toml::parse(toml_text, source);
  } catch (const toml::parse_error& e) {
    throw config_error(source + ": line " + std::to_string(e.source().begin.line) + ": " +
                       std::string(e.description()));
  }
  token_registry registry;
  for (auto&& [key, node] : root) {
    const std::string key_at = source + ": line " + std::to_string(key.source().begin.line) + ": ";
    if (key.str() != "token")
      throw config_error(key_at + "unknown key " + shown(key.str()) +
                         " (each token is a [[token]] table)");
    if (!node.is_array_of_tables()) throw config_error(key_at + "token must be [[token]] tables");
    for (const toml::node& item : *node.as_array()) {
      const toml::table& table = *item.as_table();
      const std::string where = at(source, item);
      token_policy policy;
      policy.max_tunnels = default_max_tunnels;
      std::optional<digest> hash;
      bool has_name = false;
      for (auto&& [field_key, value] : table) {
        const std::string field(field_key.str());
        const std::string here = at(source, value);
        if (field == "name") {
          const auto* text = value.as_string();
          if (!text || !valid_name(text->get()))
            throw config_error(here +
                               "name must be 1-64 characters of A-Z, a-z, 0-9, '-', '_', "
                               "'.' and '@'" +
                               (text ? ", got " + shown(text->get()) : std::string()));
          policy.name = text->get();
          has_name = true;
        } else if (field == "token" || field == "sha256") {
          const auto* text = value.as_string();
          if (!text) throw config_error(here + field + " must be a string");
          if (hash) throw config_error(here + "give token or sha256, not both");
          const std::string& secret = text->get();
          if (field == "token") {
            if (auto why = shared::util::check_token_length(secret))
              throw config_error(here + "token " + *why);
            hash = sha256(secret);
          } else {
            hash = parse_hex_digest(secret);
            if (!hash)
              throw config_error(here +
                                 "sha256 must be 64 hexadecimal digits (the output of "
                                 "'printf %s TOKEN | sha256sum')");
          }
        } else if (field == "max_tunnels") {
          const auto* number = value.as_integer();
          if (!number || number->get() < 1 || number->get() > limits::max_tunnels)
            throw config_error(here + "max_tunnels must be an integer between 1 and " +
                               std::to_string(limits::max_tunnels));
          policy.max_tunnels = std::uint32_t(number->get());
        } else if (field == "subdomains") {
          policy.subdomains = string_list(
              value, source, field, [](const std::string& p) -> std::optional<std::string> {
                if (valid_pattern(p)) return std::nullopt;
                return "must be 1-63 characters of a-z, 0-9, '-' and '*', got " + shown(p);
              });
          if (policy.subdomains.empty())
            throw config_error(here + "subdomains must not be empty (leave it out for any name)");
        } else if (field == "reserved") {
          policy.reserved = string_list(value, source, field,
                                        [](const std::string& label) -> std::optional<std::string> {
                                          if (auto why = domain_pool::check_label(label))
                                            return *why + ", got " + shown(label);
                                          return std::nullopt;
                                        });
        } else {
          throw config_error(
              at(source, value) + "unknown key " + shown(field) +
              " in [[token]] (name, token, sha256, max_tunnels, subdomains, reserved)");
        }
      }
      if (!has_name) throw config_error(where + "[[token]] needs a name");
      if (!hash)
        throw config_error(where + "token " + shown(policy.name) + " needs token or sha256");
      registry.add(std::move(policy), *hash, where);
    }
  }
  if (registry.open())
    throw config_error(source +
                       ": defines no [[token]]; leave out --tokens-file to accept any "
                       "client");
  return registry;
}

token_registry token_registry::load_file(const std::string& path, std::uint32_t default_max_tunnels,
                                         std::vector<std::string>* /*warnings*/) {
  return parse(read_checked(path), path, default_max_tunnels);
}

token_registry token_registry::from_tokens(const std::vector<std::string>& tokens,
                                           std::uint32_t max_tunnels_each) {
  token_registry registry;
  for (const std::string& token : tokens) {
    const digest hash = sha256(token);
    const bool repeated = std::any_of(registry.entries_.begin(), registry.entries_.end(),
                                      [&](const entry& e) { return e.hash == hash; });
    if (repeated) continue;
    token_policy policy;
    policy.name = "token-" + std::to_string(registry.entries_.size() + 1);
    policy.max_tunnels = max_tunnels_each;
    registry.entries_.push_back({std::move(policy), hash});
  }
  return registry;
}

const token_policy* token_registry::authenticate(std::string_view presented) const {
  if (open()) return anonymous_.get();
  const digest hash = sha256(presented);
  // Every entry is compared and the index picked with a mask, so the time does not depend on
  // which entry matched, or whether one did.
  std::size_t match = entries_.size();
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    const std::size_t equal =
        std::size_t(CRYPTO_memcmp(entries_[i].hash.data(), hash.data(), hash.size()) == 0);
    const std::size_t mask = std::size_t(0) - equal;
    match = (i & mask) | (match & ~mask);
  }
  return match < entries_.size() ? &entries_[match].policy : nullptr;
}

bool token_registry::reserved_by_other(const token_policy* who, std::string_view label) const {
  const std::string lower = to_lower(label);
  for (const entry& e : entries_)
    if (&e.policy != who && std::find(e.policy.reserved.begin(), e.policy.reserved.end(), lower) !=
                                e.policy.reserved.end())
      return true;
  return false;
}

bool token_registry::is_reserved(std::string_view label) const {
  return reserved_by_other(nullptr, label);
}

const token_policy* token_registry::find(std::string_view name) const {
  if (open()) return name == anonymous_->name ? anonymous_.get() : nullptr;
  for (const entry& e : entries_)
    if (e.policy.name == name) return &e.policy;
  return nullptr;
}

std::optional<std::string> token_registry::check_requested_name(const token_policy* who,
                                                                std::string_view label) const {
  if (!who) return std::string(refusal);
  const bool any_name =
      std::find(who->subdomains.begin(), who->subdomains.end(), "*") != who->subdomains.end();
  if (label.empty()) {
    if (any_name) return std::nullopt;
    return "this token must ask for a name matching " + joined(who->subdomains) +
           " (a generated name is not allowed)";
  }
  const std::string lower = to_lower(label);
  if (std::find(who->reserved.begin(), who->reserved.end(), lower) != who->reserved.end())
    return std::nullopt;
  if (reserved_by_other(who, lower)) return "the name " + shown(lower) + " is reserved";
  for (const std::string& pattern : who->subdomains)
    if (glob_match(pattern, lower)) return std::nullopt;
  return "this token may only use names matching " + joined(who->subdomains);
}

}  // namespace culvert::supervisor
