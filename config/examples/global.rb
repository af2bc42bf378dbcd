# Carina global configuration, read by the global scheduler: the shared resource pools and the services
# that draw on them. Parsed, never executed: only Ruby literals. Numbers may be written as strings, as
# the original global.rb did. Memory is in MB.
#
# Classes, lowest first: bronze < silver < gold < platinum. A service may use the pools of its own class
# and of higher classes, in the zone of the pool its environment asks for (an environment's endpoint name
# must be one of these pool names). Capacity a lower class borrows from a higher-class pool is taken back
# (its newest VM scaled down) when a request of the pool's class needs it.
#
# Same content in YAML: global.yaml.

SHAREDPOOLS = {
  # The endpoint the example environments (config.rb) use.
  'onesim' => {
    :zone              => 'lab',
    :allocateable_cpus => '8',
    :allocateable_mem  => '8192',
    :service_class     => 'silver',
  },
  # Reserved for gold services; silver and bronze borrow it while it is idle.
  'onesim-gold' => {
    :zone              => 'lab',
    :allocateable_cpus => '16',
    :allocateable_mem  => '32768',
    :service_class     => 'gold',
  },
}

# Every service (carina-admin service add NAME --class C) needs an entry here whose :priority is C. While this
# configuration is in force, every VM its environments want (a create's master and slaves included) asks the
# scheduler first; add :scaleups_only => true to an entry to count only scale-ups, as the original did.
SERVICES = {
  'oneenv1' => { :priority => 'silver', :maxcpus => '12', :maxmemory => '16384' },
  'oneenv2' => { :priority => 'gold',   :maxcpus => '16', :maxmemory => '32768' },
  'batch'   => { :priority => 'bronze', :maxcpus => '4',  :maxmemory => '4096' },
}
