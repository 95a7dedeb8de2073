// State file: JSON {tunnel_id, secret (hex), domain}, mode 0600 in a 0700 directory.
#include "client/state_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

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
  // The key holds the server address and more; a hash keeps the file name short and safe.
  char name[40];
  std::snprintf(name, sizeof(name), "tunnel-%016zx.json", std::hash<std::string>{}(key));
  path_ = dir_ + "/" + name;
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
    if (!from_hex(json.at("secret").get<std::string>(), saved.secret)) throw std::runtime_error("bad secret");
    return saved;
  } catch (const std::exception& e) {
    spdlog::warn("ignoring unreadable state file {}: {}", path_, e.what());
    return std::nullopt;
  }
}

bool state_file::save(const saved_tunnel& saved) const {
  if (path_.empty()) return true;
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) {
    spdlog::warn("cannot create state directory {}: {}", dir_, ec.message());
    return false;
  }
  ::chmod(dir_.c_str(), 0700);
  const nlohmann::json json = {{"tunnel_id", saved.tunnel_id},
                               {"secret", to_hex(saved.secret)},
                               {"domain", saved.domain}};
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
