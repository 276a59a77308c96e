#include "hiapi/http/message.h"

#include <strings.h>

#include <algorithm>
#include <charconv>

namespace hiapi::http {

namespace {

bool sameName(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

// A byte loop: it runs over every header of every forwarded request.
bool specialByte(char c) { return c == '\r' || c == '\n' || c == '\0'; }

}  // namespace

const std::string* findHeader(const Headers& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (sameName(h.name, name)) {
      return &h.value;
    }
  }
  return nullptr;
}

bool safeHeader(const Header& h) {
  if (h.name.empty() || std::any_of(h.name.begin(), h.name.end(), specialByte)) {
    return false;
  }
  const std::string& v = h.value;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!specialByte(v[i])) {
      continue;
    }
    if (v[i] == '\0') {
      return false;
    }
    while (i < v.size() && (v[i] == '\r' || v[i] == '\n')) {
      ++i;
    }
    if (i == v.size() || (v[i] != ' ' && v[i] != '\t')) {
      return false;
    }
  }
  return true;
}

void writeRequest(std::string& out, std::string_view method, std::string_view target,
                  std::string_view host, const Headers& headers, std::string_view body,
                  UnsafeHeaders unsafe) {
  out.clear();
  size_t size = 64 + method.size() + target.size() + host.size() + body.size();  // line, framing
  for (const Header& h : headers) {
    size += h.name.size() + h.value.size() + 4;
  }
  out.reserve(size);  // one allocation at most (none when out is reused)
  out.append(method).append(1, ' ').append(target);
  out.append(" HTTP/1.1\r\nHost: ").append(host).append("\r\n");
  bool has_length = false;
  for (const Header& h : headers) {
    if (unsafe == UnsafeHeaders::Drop && !safeHeader(h)) {
      continue;
    }
    has_length = has_length || sameName(h.name, "Content-Length");
    out.append(h.name).append(": ").append(h.value).append("\r\n");
  }
  const bool body_method = method == "POST" || method == "PUT" || method == "PATCH";
  if (!has_length && (!body.empty() || body_method)) {
    char digits[24];
    const auto end = std::to_chars(digits, digits + sizeof digits, body.size()).ptr;
    out.append("Content-Length: ").append(digits, end).append("\r\n");
  }
  out.append("\r\n").append(body);
}

}  // namespace hiapi::http
