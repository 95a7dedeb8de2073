// State file: JSON {tunnel_id, secret (hex), domain}, mode 0600 in a 0700 directory.
#include "client/state_file.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace culvert::client {

namespace {

std::string to_hex(std::span<const std::uint8_t> bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (auto b : bytes) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

bool from_hex(const std::string& text, std::span<std::uint8_t> out) {
  if (text.size() != out.size() * 2) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(text[2 * i]), lo = nibble(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = std::uint8_t(hi << 4 | lo);
  }
  return true;
}

}  // namespace

state_file::state_file(std::string dir, const std::string& key) : dir_(std::move(dir)) {
  if (dir_.empty()) return;
  // The key holds the server address and more; a hash (FNV-1a, stable across builds) keeps the
  // file name short and safe.
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : key) hash = (hash ^ c) * 0x100000001b3ULL;
  char name[40];
  std::snprintf(name, sizeof(name), "tunnel-%016llx.json", static_cast<unsigned long long>(hash));
  path_ = dir_ + "/" + name;

  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) {
    spdlog::warn("cannot create state directory {}: {}; the address will not be kept", dir_,
                 ec.message());
    path_.clear();
    return;
  }
  ::chmod(dir_.c_str(), 0700);
  const auto lock_path = path_ + ".lock";
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0 || ::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      spdlog::info(
          "another culvert with the same arguments is running; this one gets an "
          "address of its own and does not save it");
    else
      spdlog::warn("cannot lock {}: {}; the address will not be kept", lock_path,
                   std::strerror(errno));
    path_.clear();
  }
}

state_file::~state_file() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

std::optional<saved_tunnel> state_file::load() const {
  if (path_.empty()) return std::nullopt;
  std::ifstream in(path_);
  if (!in) return std::nullopt;
  try {
    auto json = nlohmann::json::parse(in);
    saved_tunnel saved;
    saved.tunnel_id = json.at("tunnel_id").get<std::uint64_t>();
    saved.domain = json.at("domain").get<std::string>();
    if (!from_hex(json.at("secret").get<std::string>(), saved.secret))
      throw std::runtime_error("bad secret");
    return saved;
  } catch (const std::exception& e) {
    spdlog::warn("ignoring unreadable state file {}: {}", path_, e.what());
    return std::nullopt;
  }
}

bool state_file::save(const saved_tunnel& saved) const {
  if (path_.empty()) return true;
  const nlohmann::json json = {
      {"tunnel_id", saved.tunnel_id}, {"secret", to_hex(saved.secret)}, {"domain", saved.domain}};
  const auto text = json.dump() + "\n";
  const auto temporary = path_ + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    spdlog::warn("open {}: {}", temporary, std::strerror(errno));
    return false;
  }
  const bool written = ::write(fd, text.data(), text.size()) == ssize_t(text.size());
  ::close(fd);
  if (!written || ::rename(temporary.c_str(), path_.c_str()) != 0) {
    spdlog::warn("writing {}: {}", path_, std::strerror(errno));
    ::unlink(temporary.c_str());
    return false;
  }
  return true;
}

}  // namespace culvert::client
