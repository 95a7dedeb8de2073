// See secrets.hpp. Paths are shown through printable(): they come from flags and files, and a
// message must not garble the terminal it is printed on.
#include "shared/util/secrets.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "shared/log/printable.hpp"

namespace culvert::shared::util {

namespace {
std::string quoted(std::string_view path) {
  return "'" + log::printable(path, 200) + "'";
}
}  // namespace

std::optional<std::string> check_token_length(std::string_view token) {
  if (token.size() >= min_token_bytes && token.size() <= max_token_bytes) return std::nullopt;
  return "must be " + std::to_string(min_token_bytes) + "-" + std::to_string(max_token_bytes) +
         " bytes, got " + std::to_string(token.size()) + " bytes";
}

std::optional<std::string> check_secret_file(std::string_view what, const std::string& path,
                                             const struct stat& st) {
  const std::string file = std::string(what) + " " + quoted(path);
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 07777));
  if (!S_ISREG(st.st_mode)) return file + " is not a regular file";
  if (st.st_uid != 0 && st.st_uid != ::geteuid())
    return file + " is owned by uid " + std::to_string(st.st_uid) +
           "; it must belong to root or to the user running this program (uid " +
           std::to_string(::geteuid()) + ")";
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return file + " is writable by group or others (mode " + mode +
           "), so they could change the secrets; run chmod 600 " + quoted(path);
  if (st.st_mode & (S_IRGRP | S_IROTH))
    return file + " is readable by group or others (mode " + mode +
           ") but holds secrets; run chmod 600 " + quoted(path);
  return std::nullopt;
}

std::string read_secret_file(std::string_view what, const std::string& path,
                             std::size_t max_bytes) {
  const std::string file = std::string(what) + " " + quoted(path);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) throw secret_file_error("cannot open " + file + ": open: " + std::strerror(errno));
  struct closer {
    int fd;
    ~closer() { ::close(fd); }
  } close_on_return{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    throw secret_file_error("cannot check " + file + ": fstat: " + std::strerror(errno));
  if (auto why = check_secret_file(what, path, st)) throw secret_file_error(*why);
  std::string text;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw secret_file_error("cannot read " + file + ": read: " + std::strerror(errno));
    if (n == 0) break;
    text.append(buffer, std::size_t(n));
    if (text.size() > max_bytes)
      throw secret_file_error(file + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  return text;
}

}  // namespace culvert::shared::util
