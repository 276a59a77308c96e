#include "hiapi/core/task_registry.h"

#include <algorithm>
#include <tuple>

namespace hiapi::core {

TaskRecord* TaskRegistry::find(const std::string& key, const std::string& task_id) {
  auto it = records_.find(TaskRecordId{key, task_id});
  return it == records_.end() ? nullptr : &it->second;
}

const TaskRecord* TaskRegistry::find(const std::string& key, const std::string& task_id) const {
  auto it = records_.find(TaskRecordId{key, task_id});
  return it == records_.end() ? nullptr : &it->second;
}

TaskRecord& TaskRegistry::findOrCreate(const std::string& key, const std::string& task_id,
                                       size_t tier, MonotonicTime now) {
  auto [it, inserted] = records_.try_emplace(TaskRecordId{key, task_id});
  TaskRecord& r = it->second;
  if (inserted) {
    r.id = &it->first;
    r.tier = tier;
    r.created = now;
    r.last_upstream_poll = now;
    r.last_client_poll = now;
    r.lru = lru_.insert(lru_.end(), &r);
  }
  return r;
}

void TaskRegistry::erase(TaskRecord& r) {
  lru_.erase(r.lru);
  auto it = records_.find(*r.id);  // look up before erasing: r.id points into the node
  records_.erase(it);
}

bool TaskRegistry::hasRecords(const std::string& key) const {
  auto it = records_.lower_bound(TaskRecordId{key, std::string()});
  return it != records_.end() && it->first.first == key;
}

bool TaskRegistry::forgetSlot(const std::string& key, SlotId slot) {
  for (auto it = records_.lower_bound(TaskRecordId{key, std::string()});
       it != records_.end() && it->first.first == key; ++it) {
    if (it->second.slot == slot) {
      it->second.slot.reset();
      return true;
    }
  }
  return false;
}

size_t TaskRegistry::forgetSlot(SlotId slot) {
  TaskRecord* holder = nullptr;
  size_t holders = 0;
  for (auto& [id, r] : records_) {
    if (r.slot == slot) {
      holder = &r;
      ++holders;
    }
  }
  if (holders != 1) {
    return 0;  // none, or ambiguous across keys
  }
  holder->slot.reset();
  return 1;
}

std::vector<const TaskRecord*> TaskRegistry::slotHolders() const {
  std::vector<const TaskRecord*> holders;
  for (const auto& [id, r] : records_) {
    if (r.slot) {
      holders.push_back(&r);
    }
  }
  std::sort(holders.begin(), holders.end(), [](const TaskRecord* a, const TaskRecord* b) {
    return std::tie(a->created, *a->id) < std::tie(b->created, *b->id);
  });
  return holders;
}

}  // namespace hiapi::core
