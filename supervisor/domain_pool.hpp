// Domain names under the base domain: hands out requested or generated ("brave-otter-42") labels
// and takes them back. Runs in the supervisor (single-threaded, no locking).
// Invariant: a domain is given to at most one tunnel at a time; every name it hands out is
// lowercase, a valid DNS name, and fits the shared table's domain field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>

namespace culvert::supervisor {

class domain_pool {
 public:
  // A full domain must fit shared::ipc::domain_capacity with its NUL (checked in the .cpp).
  static constexpr std::size_t max_domain_length = 127;
  // Leaves room for the longest generated label, so generation never produces a name too long.
  static constexpr std::size_t max_base_domain_length = 100;

  // Throws std::invalid_argument if check_base_domain() refuses base_domain (the config's
  // validate() rejects such names first).
  domain_pool(std::string base_domain, std::uint64_t seed);

  enum class result { ok, name_taken, name_invalid, exhausted };
  struct outcome {
    result status = result::ok;
    std::string domain;  // "<label>.<base_domain>" when ok
    std::string error;   // human message on failure, safe to send to the client
  };

  // requested_label empty: generate a readable free name like "brave-otter-42"; otherwise the
  // label (case-insensitive, stored lowercase) if valid and free.
  outcome take(std::string_view requested_label);
  // Does nothing for a domain that is not in use (e.g. a tunnel torn down twice).
  void give_back(const std::string& domain);
  bool in_use(std::string_view domain) const;  // case-insensitive
  std::size_t in_use_count() const { return used_.size(); }
  const std::string& base_domain() const { return base_domain_; }

  // nullopt if the label (case-insensitive) is a valid requestable subdomain, else the reason
  // ("must be 1-63 characters of a-z, 0-9 and '-'", "must not start or end with '-'",
  // "is reserved").
  static std::optional<std::string> check_label(std::string_view label);
  // nullopt if name can be the base domain (lowercase DNS name of at most
  // max_base_domain_length characters, not an IP address), else the reason.
  static std::optional<std::string> check_base_domain(std::string_view name);

 private:
  std::optional<std::string> generate();

  std::string base_domain_;  // lowercase, no leading or trailing dot
  std::mt19937_64 random_;
  int digits_;  // width of the number in generated names; only grows, once a width is crowded
  std::set<std::string, std::less<>> used_;  // full domains, lowercase
};

}  // namespace culvert::supervisor
