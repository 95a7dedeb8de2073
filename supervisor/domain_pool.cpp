// Domain names under the base domain (see domain_pool.hpp). Runs in the supervisor.
// Invariant: used_ holds exactly the domains handed out and not yet given back, all lowercase.
#include "supervisor/domain_pool.hpp"

#include <algorithm>
#include <array>
#include <iterator>
#include <stdexcept>

#include "shared/ipc/tunnel_table.hpp"
#include "shared/log/printable.hpp"

namespace culvert::supervisor {

static_assert(domain_pool::max_domain_length + 1 == shared::ipc::domain_capacity,
              "a full domain and its NUL must fit the shared table's domain field");

namespace {

// Short, friendly words: a generated name is read aloud and typed by people.
constexpr std::string_view adjectives[] = {
    "amber",  "azure",  "bold",   "brave",  "breezy", "bright", "brisk",  "bubbly",
    "calm",   "cheery", "civic",  "clever", "cosmic", "cozy",   "crisp",  "daring",
    "dapper", "eager",  "fancy",  "fluffy", "frank",  "fresh",  "gentle", "giddy",
    "glad",   "golden", "grand",  "happy",  "hardy",  "humble", "jolly",  "jovial",
    "keen",   "kind",   "lively", "lucky",  "merry",  "mighty", "misty",  "modest",
    "nimble", "noble",  "plucky", "polite", "proud",  "quick",  "quiet",  "rapid",
    "rosy",   "rustic", "shiny",  "silver", "sleek",  "smart",  "snappy", "snug",
    "sunny",  "swift",  "tidy",   "vivid",  "warm",   "witty",  "zesty",  "mellow",
};
constexpr std::string_view nouns[] = {
    "otter",   "badger", "beaver", "bison",  "falcon", "ferret", "finch",   "fox",
    "gecko",   "heron",  "ibis",   "koala",  "lemur",  "lynx",   "marmot",  "moose",
    "newt",    "ocelot", "osprey", "owl",    "panda",  "parrot", "pelican", "penguin",
    "puffin",  "quail",  "rabbit", "raven",  "robin",  "salmon", "seal",    "sparrow",
    "squid",   "stork",  "swan",   "tapir",  "tiger",  "toucan", "trout",   "turtle",
    "walrus",  "wombat", "yak",    "zebra",  "acorn",  "aspen",  "birch",   "brook",
    "canyon",  "cedar",  "cloud",  "comet",  "coral",  "delta",  "ember",   "fern",
    "glacier", "harbor", "island", "lagoon", "maple",  "meadow", "nebula",  "willow",
};
static_assert(std::size(adjectives) == 64 && std::size(nouns) == 64);

// Generation starts with 2-digit numbers and widens for good after this many collisions in a row
// (so a crowded pool does not pay for the narrow widths on every take); with 64 * 64 words,
// 4 digits already give 36 million names, 8 digits 368 billion.
constexpr int attempts_per_width = 16;
constexpr int min_digits = 2;
constexpr int max_digits = 8;
constexpr std::size_t max_word_length = 8;
// "<adjective>-<noun>-<number>.<base>" must fit max_domain_length for every base the pool accepts.
static_assert(max_word_length * 2 + max_digits + 2 + 1 + domain_pool::max_base_domain_length <=
              domain_pool::max_domain_length);

constexpr bool words_fit(const auto& words) {
  for (auto w : words)
    if (w.empty() || w.size() > max_word_length) return false;
  return true;
}
static_assert(words_fit(adjectives) && words_fit(nouns));

// Names a client must not get: they look official or are claimed by common tooling.
constexpr std::string_view reserved_labels[] = {
    "admin", "api",  "autoconfig", "autodiscover", "control", "culvert", "dashboard", "dns",
    "ftp",   "imap", "localhost",  "mail",         "mx",      "ns",      "ns1",       "ns2",
    "pop",   "root", "smtp",       "status",       "webmail", "wpad",    "www",
};

constexpr std::string_view label_chars_reason = "must be 1-63 characters of a-z, 0-9 and '-'";
constexpr std::size_t max_label_length = 63;

bool is_label_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

std::string to_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return out;
}

// The requested label comes from an untrusted client and ends up in logs and in its reply: keep
// it printable and short.
std::string printable(std::string_view s) {
  return shared::log::printable(s, max_label_length);
}

std::uint64_t power_of_ten(int exponent) {
  std::uint64_t value = 1;
  while (exponent-- > 0) value *= 10;
  return value;
}

}  // namespace

domain_pool::domain_pool(std::string base_domain, std::uint64_t seed)
    : base_domain_(to_lower(base_domain)), random_(seed), digits_(min_digits) {
  if (auto reason = check_base_domain(base_domain_))
    throw std::invalid_argument("base domain '" + printable(base_domain_) + "' " + *reason);
}

std::optional<std::string> domain_pool::check_label(std::string_view label) {
  const std::string lower = to_lower(label);
  if (lower.empty() || lower.size() > max_label_length ||
      !std::all_of(lower.begin(), lower.end(), is_label_char))
    return std::string(label_chars_reason);
  if (lower.front() == '-' || lower.back() == '-') return "must not start or end with '-'";
  // "xn--" labels are punycode: they would display as arbitrary Unicode (look-alike names).
  if (lower.starts_with("xn--") || std::find(std::begin(reserved_labels), std::end(reserved_labels),
                                             lower) != std::end(reserved_labels))
    return "is reserved";
  return std::nullopt;
}

std::optional<std::string> domain_pool::check_base_domain(std::string_view name) {
  if (name.empty()) return "must not be empty";
  if (name.size() > max_base_domain_length)
    return "must be at most " + std::to_string(max_base_domain_length) + " characters";
  std::string_view last_label;
  for (std::size_t start = 0;;) {
    const auto dot = name.find('.', start);
    const std::string_view label =
        name.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (label.empty() || label.size() > max_label_length ||
        !std::all_of(label.begin(), label.end(), is_label_char))
      return "must be dot-separated labels of 1-63 characters of a-z, 0-9 and '-'";
    if (label.front() == '-' || label.back() == '-')
      return "must not have a label that starts or ends with '-'";
    last_label = label;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  // An all-digit top-level label would make "1.2.3.4" acceptable, and Host headers carrying IP
  // addresses cannot name a tunnel.
  if (std::all_of(last_label.begin(), last_label.end(),
                  [](char c) { return c >= '0' && c <= '9'; }))
    return "must be a DNS name, not an IP address";
  return std::nullopt;
}

domain_pool::outcome domain_pool::take(std::string_view requested_label) {
  if (requested_label.empty()) {
    auto domain = generate();
    if (!domain)
      return {result::exhausted, {}, "no free subdomain could be generated; try again later"};
    used_.insert(*domain);
    return {result::ok, std::move(*domain), {}};
  }

  if (auto reason = check_label(requested_label))
    return {result::name_invalid,
            {},
            "subdomain '" + printable(requested_label) + "' is invalid: " + *reason};
  const std::string label = to_lower(requested_label);
  if (label.size() + 1 + base_domain_.size() > max_domain_length)
    return {result::name_invalid,
            {},
            "subdomain '" + label + "' is invalid: must be at most " +
                std::to_string(max_domain_length - 1 - base_domain_.size()) + " characters under " +
                base_domain_};
  std::string domain = label + "." + base_domain_;
  if (used_.contains(domain))
    return {result::name_taken, {}, "subdomain '" + label + "' is already in use"};
  used_.insert(domain);
  return {result::ok, std::move(domain), {}};
}

void domain_pool::give_back(const std::string& domain) {
  used_.erase(to_lower(domain));
}

bool domain_pool::in_use(std::string_view domain) const {
  return used_.contains(to_lower(domain));
}

std::optional<std::string> domain_pool::generate() {
  std::uniform_int_distribution<std::size_t> pick_adjective(0, std::size(adjectives) - 1);
  std::uniform_int_distribution<std::size_t> pick_noun(0, std::size(nouns) - 1);
  for (;; ++digits_) {
    // No leading zero: "-042" would read as a typo of "-42".
    std::uniform_int_distribution<std::uint64_t> pick_number(power_of_ten(digits_ - 1),
                                                             power_of_ten(digits_) - 1);
    for (int attempt = 0; attempt < attempts_per_width; ++attempt) {
      std::string domain;
      domain.append(adjectives[pick_adjective(random_)]);
      domain.append("-");
      domain.append(nouns[pick_noun(random_)]);
      domain.append("-");
      domain.append(std::to_string(pick_number(random_)));
      domain.append(".");
      domain.append(base_domain_);
      if (!used_.contains(domain)) return domain;
    }
    if (digits_ == max_digits) return std::nullopt;  // stays at the widest width for next time
  }
}

}  // namespace culvert::supervisor
