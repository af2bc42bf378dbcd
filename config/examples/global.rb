# Carina global configuration (read by the global scheduler): shared resource pools and the services
# that draw on them. Parsed, never executed: only Ruby literals. Numbers may be written as strings,
# as the original global.rb did. Memory is in MB. Classes: bronze < silver < gold < platinum.

SHAREDPOOLS = {
  'flm01' => {
    :zone              => 'flame',
    :allocateable_cpus => '10',
    :allocateable_mem  => '10248',
    :service_class     => 'gold',
  },
  'hlx02' => {
    :zone              => 'helix',
    :allocateable_cpus => '5',
    :allocateable_mem  => '4096',
    :service_class     => 'silver',
  },
}

SERVICES = {
  'oneenv1' => { :priority => 'silver', :maxcpus => '12', :maxmemory => '128000' },
  'oneenv2' => { :priority => 'gold',   :maxcpus => '12', :maxmemory => '64000' },
}
